#!/usr/bin/env bash
# The main job, on a fresh Debian 12 machine, as root: installs what is needed, builds
# mlenv, starts a private dockerd with mlenv as its default runtime, and runs two
# containers through it: one admitted (its limits set by policy, read back from its
# own cgroup) and one refused, with the reason Docker prints; a project quota; and
# GPUs: on a machine without one, four GPUs served by the test NVML library
# (tests/fake-nvml) with device nodes made by mknod, one of them busy. Stops what it
# started.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
bash tests/install-deps.sh
# The whole workspace: the test NVML library is a cdylib, not a binary.
cargo build --workspace -q
# mlenv's binaries as they ship (mlenv-runtime linked statically, packaging/build-bins.sh),
# where the musl target and musl-gcc are installed; else the plain build's, saying so.
if bash packaging/build-bins.sh --check; then
    MLENV_BIN_DIR=$(bash packaging/build-bins.sh debug | tail -1)
    export MLENV_BIN_DIR
else
    echo "demo: running the plain cargo build's mlenv-runtime, not the one that ships" >&2
fi
trap 'bash tests/e2e-env.sh stop >/dev/null' EXIT
bash tests/e2e-env.sh start >/dev/null
source /run/mlenv-e2e/env
export DOCKER_HOST=$MLENV_E2E_DOCKER_HOST MLENV_CONFIG=$MLENV_E2E_POLICY
mlenv=$MLENV_E2E_BIN_DIR/mlenv
echo "== dockerd with $MLENV_E2E_BIN_DIR/mlenv-runtime as its default runtime"

# An image from busybox-static (this machine needs no registry).
rootfs=$(mktemp -d)
mkdir -p "$rootfs/bin" "$rootfs/tmp" "$rootfs/etc"
cp "$(command -v busybox)" "$rootfs/bin/busybox"
for a in $("$rootfs/bin/busybox" --list); do [ "$a" = busybox ] || ln -s busybox "$rootfs/bin/$a"; done
tar -C "$rootfs" -c . | docker import - mlenv-busybox:demo >/dev/null
rm -rf "$rootfs"

rm -rf /run/mlenv-e2e/demo
mkdir -p /run/mlenv-e2e/demo/nvml /run/mlenv-e2e/demo/dev
# Four GPUs: GPU 0 at 90% utilization, GPU 1 at 20%, 2 and 3 idle.
cp target/debug/libmlenv_fake_nvml.so /run/mlenv-e2e/demo/nvml/libnvidia-ml.so.1
cat >/run/mlenv-e2e/demo/nvml/fake-nvml.json <<'JSON'
{"gpus": [
  {"uuid": "GPU-00000000-0000-0000-0000-000000000000", "minor": 0, "utilization_gpu": 90},
  {"uuid": "GPU-11111111-1111-1111-1111-111111111111", "minor": 1, "utilization_gpu": 20},
  {"uuid": "GPU-22222222-2222-2222-2222-222222222222", "minor": 2},
  {"uuid": "GPU-33333333-3333-3333-3333-333333333333", "minor": 3}
]}
JSON
for i in 0 1 2 3; do mknod -m 666 /run/mlenv-e2e/demo/dev/nvidia$i c 195 $i; done
mknod -m 666 /run/mlenv-e2e/demo/dev/nvidiactl c 195 255
# The demo's policy alone: no drop-ins left by a test run.
rm -rf "$(dirname "$MLENV_CONFIG")/conf.d"
cat >"$MLENV_CONFIG" <<'TOML'
[inventory]
path = "/run/mlenv-e2e/demo/mlenv.db"

[gpu]
# Where no GPU exists: the test NVML library and mknod'd nodes. On a GPU host leave
# both out (libnvidia-ml.so.1 and /dev).
nvml_library = "/run/mlenv-e2e/demo/nvml/libnvidia-ml.so.1"
device_dir = "/run/mlenv-e2e/demo/dev"
inject = "devices"

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
echo "== refused: docker run --privileged and --cap-add SYS_ADMIN ([security] rules)"
set +e
docker run --rm --runtime=mlenv --privileged mlenv-busybox:demo true
docker run --rm --runtime=mlenv --cap-add SYS_ADMIN mlenv-busybox:demo true
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
echo "== GPUs: docker run --gpus 2 (Docker writes GPUs 0,1; mlenv chooses the two best)"
show='ls /dev | grep nvidia; echo NVIDIA_VISIBLE_DEVICES=$NVIDIA_VISIBLE_DEVICES'
docker run --rm --runtime=mlenv --gpus 2 mlenv-busybox:demo sh -c "$show"
g=$(docker run -d --runtime=mlenv --gpus 2 mlenv-busybox:demo sleep 600)
echo
echo "== GPUs: MLENV_GPUS=1 gets GPU 1 (20% < 30%); one more finds none free"
h=$(docker run -d --runtime=mlenv -e MLENV_GPUS=1 mlenv-busybox:demo sleep 600)
set +e
docker run --rm --runtime=mlenv -e MLENV_GPUS=1 mlenv-busybox:demo true
echo "docker run exited $?"
set -e
$mlenv ps
docker rm -f "$g" "$h" >/dev/null

echo
echo "== mlenv history"
$mlenv history
