#!/usr/bin/env bash
# Every benchmark of docs/benchmarks.md, in one command, as root on a machine with
# runc, busybox-static and docker.io (tests/install-deps.sh):
#
#   bash tests/bench.sh [N]      # N runs per case (default 200)
#
# 1. create latency of mlenv-runtime against runc, with and without a GPU request,
#    mlenv's own cost and peak RSS, 64 creates at once    (examples/bench_create.rs)
# 2. every call of one container's life as an engine makes them (create, start,
#    delete, delete --force), runc against mlenv-runtime  (bench_create calls)
#    and a create cut where runc starts: what mlenv adds before it, and how much
#    slower runc runs after it, against an exec-only wrapper too (bench_create split)
# 3. decision time against inventory size                (benches/decide.rs, criterion)
# 4. `docker run` wall time through mlenv against runc, 3N runs each (a `docker run`
#    spreads by a third of its time), on a dockerd of its own (tests/e2e-env.sh with
#    the release binaries), then N more with each call dockerd makes timed where it
#    makes it (examples/call_timer.rs)
# The soak is a test: MLENV_SOAK=1000 cargo test -p mlenv --test e2e soak (see docs).
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-200}
# The binaries as they ship (mlenv-runtime linked statically) and the examples.
dist=$(bash packaging/build-bins.sh release | tail -1)
# The test NVML library the GPU cases load, as the sources are now.
cargo build --release -q -p mlenv-fake-nvml
export MLENV_BIN_DIR=$dist
echo "== create latency (bench_create $n)"
target/release/examples/bench_create "$n"
echo
echo "== the calls of one container (bench_create calls $n)"
target/release/examples/bench_create calls "$n"
echo
echo "== a create cut where runc starts (bench_create split $n)"
target/release/examples/bench_create split "$n"
echo
echo "== decision time against inventory size (cargo bench -p mlenv --bench decide)"
cargo bench -p mlenv --bench decide 2>&1 | grep -E '^decide/|time:'
echo
echo "== docker run (bench_create docker $((3 * n)) $n)"
trap 'tests/e2e-env.sh stop >/dev/null' EXIT
tests/e2e-env.sh start >/dev/null
source /run/mlenv-e2e/env
DOCKER_HOST=$MLENV_E2E_DOCKER_HOST target/release/examples/bench_create docker $((3 * n)) "$n"
