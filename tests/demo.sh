#!/usr/bin/env bash
# The main job, on a fresh Debian 12 machine, as root: installs what is needed, builds
# mlenv, starts a private dockerd with mlenv as its default runtime, and runs two
# containers through it: one admitted (its limits set by policy, read back from its
# own cgroup) and one refused, with the reason Docker prints. Stops what it started.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
bash tests/install-deps.sh
cargo build --workspace --bins -q
trap 'bash tests/e2e-env.sh stop >/dev/null' EXIT
bash tests/e2e-env.sh start >/dev/null
source /run/mlenv-e2e/env
export DOCKER_HOST=$MLENV_E2E_DOCKER_HOST MLENV_CONFIG=$MLENV_E2E_POLICY
mlenv=target/debug/mlenv

# An image from busybox-static (this machine needs no registry).
rootfs=$(mktemp -d)
mkdir -p "$rootfs/bin" "$rootfs/tmp" "$rootfs/etc"
cp "$(command -v busybox)" "$rootfs/bin/busybox"
for a in $("$rootfs/bin/busybox" --list); do [ "$a" = busybox ] || ln -s busybox "$rootfs/bin/$a"; done
tar -C "$rootfs" -c . | docker import - mlenv-busybox:demo >/dev/null
rm -rf "$rootfs"

rm -rf /run/mlenv-e2e/demo
cat >"$MLENV_CONFIG" <<'TOML'
[inventory]
path = "/run/mlenv-e2e/demo/mlenv.db"

[limits]
over_limit = "refuse"
default_memory = "256M"
max_memory = "1G"
default_cpus = 1
default_pids = 512

[admission]
# The build that just ran says nothing about this machine's load.
max_load_per_cpu = false
max_psi_cpu = false
# Small machines: let CPU limits add up to twice the CPUs.
cpu_overcommit = 2.0

# At most 2 live containers in project "demo".
[[quota]]
project = "demo"
max_containers = 2
TOML
echo "== policy ($MLENV_CONFIG)"
$mlenv policy check | sed -n '1p'

echo
echo "== admitted: docker run --runtime=mlenv (no limits asked: the policy's defaults apply)"
docker run --rm --runtime=mlenv mlenv-busybox:demo sh -c \
    'echo "memory limit: $(cat /sys/fs/cgroup/memory/memory.limit_in_bytes 2>/dev/null || cat /sys/fs/cgroup/memory.max)"; echo "pids limit: $(cat /sys/fs/cgroup/pids/pids.max 2>/dev/null || cat /sys/fs/cgroup/pids.max)"'

echo
echo "== refused: docker run -m 4g (above max_memory)"
set +e
docker run --rm --runtime=mlenv -m 4g mlenv-busybox:demo true
echo "docker run exited $?"
set -e

echo
echo "== quota: a third container in project demo (max_containers = 2)"
a=$(docker run -d --runtime=mlenv -e MLENV_PROJECT=demo mlenv-busybox:demo sleep 600)
b=$(docker run -d --runtime=mlenv -e MLENV_PROJECT=demo mlenv-busybox:demo sleep 600)
set +e
docker run -d --rm --runtime=mlenv -e MLENV_PROJECT=demo mlenv-busybox:demo sleep 600 >/dev/null
echo "docker run exited $?"
set -e
$mlenv ps
docker rm -f "$a" "$b" >/dev/null

echo
echo "== mlenv history"
$mlenv history
