#!/usr/bin/env bash
# Installs what mlenv's tests and demo need on Debian 12: the engines (runc, Debian's
# docker.io with its containerd, docker-compose, podman for the hooks-directory test),
# busybox-static, from which the tests build their image, rpm to build the .rpm, and
# musl-tools with rustup's musl target for the static mlenv-runtime
# (packaging/build-bins.sh).
# Idempotent; run as root.
set -euo pipefail
need=(runc docker.io containerd docker-compose busybox-static iptables podman rpm musl-tools)
missing=()
for p in "${need[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
if ! command -v cargo >/dev/null; then
    echo "install-deps: cargo not found: install a Rust toolchain (rustup) first" >&2
    exit 1
fi
musl=$(uname -m)-unknown-linux-musl
if ! rustup target list --installed 2>/dev/null | grep -qx "$musl"; then
    # Where it cannot be fetched, packaging/build-bins.sh fails and .ci/run tests the
    # binaries of the plain cargo build, saying so.
    rustup target add "$musl" || echo "install-deps: warning: cannot add the Rust target $musl: mlenv-runtime cannot be built as it ships (packaging/build-bins.sh)" >&2
fi
