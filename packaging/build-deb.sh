#!/usr/bin/env bash
# Builds mlenv's .deb from binaries already built, with dpkg-deb alone (no cargo-deb
# to install): the three binaries, the default policy as a conffile in /etc/mlenv,
# the hooks-directory entry and the Grafana dashboard under /usr/share/mlenv, the
# docs under /usr/share/doc/mlenv, man pages, and /var/lib/mlenv for the inventory.
#
#   packaging/build-bins.sh && packaging/build-deb.sh [BIN_DIR] [OUT_DIR]
#
# BIN_DIR defaults to target/dist/release (packaging/build-bins.sh: mlenv-runtime
# static), OUT_DIR to target/debian. Prints the path of
# the package. The package registers with no engine: run `mlenv install docker` (or
# containerd, podman, crio) after installing it.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
bin=${1:-$repo/target/dist/release}
out=${2:-$repo/target/debian}
version=$(sed -n 's/^version = "\(.*\)"/\1/p' "$repo/Cargo.toml" | head -1)
arch=$(dpkg --print-architecture)
for b in mlenv mlenv-runtime mlenv-hook mlenv-nvml; do
    [ -x "$bin/$b" ] || { echo "build-deb: $bin/$b missing: packaging/build-bins.sh first" >&2; exit 1; }
done

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
install -d "$stage/DEBIAN" "$stage/usr/bin" "$stage/etc/mlenv/conf.d" \
    "$stage/usr/share/mlenv/oci-hooks.d" "$stage/usr/share/mlenv/grafana" \
    "$stage/usr/share/doc/mlenv" "$stage/var/lib/mlenv"
# Stripped: debug info is not for a package (and a debug build is 100+ MB).
install -s -m 755 "$bin/mlenv" "$bin/mlenv-runtime" "$bin/mlenv-hook" "$bin/mlenv-nvml" "$stage/usr/bin/"
install -m 644 "$repo/config/mlenv.toml" "$stage/etc/mlenv/mlenv.toml"
install -m 644 "$repo/config/oci-hooks.d/mlenv.json" "$stage/usr/share/mlenv/oci-hooks.d/"
install -m 644 "$repo/config/grafana/mlenv-dashboard.json" "$stage/usr/share/mlenv/grafana/"
install -m 644 "$repo/README.md" "$repo"/docs/*.md "$stage/usr/share/doc/mlenv/"
# Man pages: mlenv's from its own command line, the two system binaries' by hand.
install -d "$stage/usr/share/man/man1" "$stage/usr/share/man/man8"
"$bin/mlenv" man "$stage/usr/share/man/man1"
install -m 644 "$repo"/packaging/man/*.8 "$stage/usr/share/man/man8/"
gzip -9n "$stage"/usr/share/man/man1/*.1 "$stage"/usr/share/man/man8/*.8
chmod 755 "$stage" "$stage/var/lib/mlenv"

cat >"$stage/DEBIAN/control" <<CONTROL
Package: mlenv
Version: $version
Architecture: $arch
Maintainer: mlenv developers <mlenv@localhost>
Depends: libc6, runc | crun
Suggests: docker.io | containerd | podman
Section: admin
Priority: optional
Installed-Size: $(du -sk "$stage" | cut -f1)
Description: OCI runtime wrapper for shared GPU servers
 mlenv-runtime sits between the container engine and runc: on create it applies
 the admin's policy (limits, GPU selection and leases, MPS shares, user mapping,
 security rules), decides admission, records it in a SQLite inventory, and hands
 over to runc. mlenv-hook records container start and end; mlenv is the admin CLI;
 mlenv-nvml reads the GPUs for mlenv-runtime.
CONTROL
echo /etc/mlenv/mlenv.toml >"$stage/DEBIAN/conffiles"
cat >"$stage/DEBIAN/postinst" <<'POSTINST'
#!/bin/sh
set -e
# The policy and the inventory are honoured only when root's and not writable by
# others: keep them so whatever the umask of the install was.
# DPKG_ROOT: set when dpkg installs into another root (dpkg --root).
root=${DPKG_ROOT:-}
chmod 755 "$root/etc/mlenv" "$root/etc/mlenv/conf.d" "$root/var/lib/mlenv"
chmod 644 "$root/etc/mlenv/mlenv.toml"
if [ "$1" = configure ] && [ -z "$2" ]; then
    echo "mlenv installed: register it with your engine, e.g. 'mlenv install docker --dry-run'"
fi
POSTINST
chmod 755 "$stage/DEBIAN/postinst"

mkdir -p "$out"
deb="$out/mlenv_${version}_${arch}.deb"
dpkg-deb --root-owner-group --build "$stage" "$deb" >/dev/null
echo "$deb"
