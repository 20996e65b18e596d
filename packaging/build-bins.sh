#!/usr/bin/env bash
# Builds mlenv's binaries as they ship, into target/dist/PROFILE (printed at the end):
#
#   packaging/build-bins.sh [release|debug]      # default release
#   packaging/build-bins.sh --check              # exit 0 where it can build, else why
#
# mlenv, mlenv-hook and mlenv-nvml for the host (glibc), and mlenv-runtime linked
# statically against musl: every call an engine makes goes through mlenv-runtime,
# and a static binary starts without the dynamic loader's and glibc's start-up
# (0.6 ms less per call passed through, docs/benchmarks.md, sixth pass). What needs
# glibc, NVML and user names from NSS, it asks of `mlenv-nvml` and `getent`
# (docs/design.md). Needs the musl target (`rustup target add
# x86_64-unknown-linux-musl`) and musl-gcc (Debian's musl-tools),
# for SQLite's C; tests/install-deps.sh installs both.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
profile=${1:-release}
musl=$(uname -m)-unknown-linux-musl
case "$profile" in
    release) flags=(--release) ;;
    debug) flags=() ;;
    --check)
        if ! rustup target list --installed 2>/dev/null | grep -qx "$musl"; then
            echo "build-bins: no Rust target $musl (rustup target add $musl)" >&2; exit 1
        fi
        if ! command -v musl-gcc >/dev/null; then
            echo "build-bins: no musl-gcc (apt-get install musl-tools)" >&2; exit 1
        fi
        exit 0 ;;
    *) echo "build-bins: profile must be release or debug, not $profile" >&2; exit 2 ;;
esac
cd "$repo"
cargo build "${flags[@]}" --workspace --bins --examples
# musl-gcc compiles the C of the -sys crates (SQLite) against musl's headers. Without
# the `cdi` feature: mlenv-runtime calls `mlenv cdi` for that (shim/Cargo.toml).
env "CC_${musl//-/_}=musl-gcc" cargo build "${flags[@]}" -p mlenv --no-default-features --bin mlenv-runtime --target "$musl"
out=$repo/target/dist/$profile
mkdir -p "$out"
cp -f "target/$profile/mlenv" "target/$profile/mlenv-hook" "target/$profile/mlenv-nvml" "$out/"
cp -f "target/$musl/$profile/mlenv-runtime" "$out/"
# The examples (bench_create, call_timer) where tests/e2e-env.sh looks for them.
ln -sfn "../../$profile/examples" "$out/examples"
echo "$out"
