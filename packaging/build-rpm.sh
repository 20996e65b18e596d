#!/usr/bin/env bash
# Builds mlenv's .rpm with rpmbuild from binaries already built (the same contents as
# the .deb; the policy is %config(noreplace)).
#
#   packaging/build-bins.sh && packaging/build-rpm.sh [BIN_DIR] [OUT_DIR]
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
bin=$(cd "${1:-$repo/target/dist/release}" && pwd)
out=${2:-$repo/target/rpm}
version=$(sed -n 's/^version = "\(.*\)"/\1/p' "$repo/Cargo.toml" | head -1)
top=$(mktemp -d)
trap 'rm -rf "$top"' EXIT
rpmbuild -bb --quiet \
    --define "_topdir $top" --define "version $version" \
    --define "bindir $bin" --define "srcroot $repo" \
    "$repo/packaging/mlenv.spec" >&2
mkdir -p "$out"
find "$top/RPMS" -name '*.rpm' -exec cp {} "$out/" \;
ls "$out"/mlenv-"$version"-*.rpm
