#!/usr/bin/env bash
# Starts (or stops) the engines the end-to-end tests drive: a containerd and a dockerd
# of their own, with their own sockets and state under /run/mlenv-e2e and
# /var/lib/mlenv-e2e, so that an engine already on the machine is left alone.
#
#   tests/e2e-env.sh start   # prints the variables the tests read; also in /run/mlenv-e2e/env
#   tests/e2e-env.sh stop
#   tests/e2e-env.sh crash-dockerd   # kill -9 dockerd, start it again
#
# dockerd finds a stub nvidia-container-runtime-hook on its PATH, so `docker run --gpus`
# works as on a GPU host (dockerd only offers --gpus when that hook exists): the stub
# reads the container state and exits 0; mlenv injects the devices itself.
#
# dockerd registers mlenv-runtime from target/debug (or $MLENV_BIN_DIR: CI gives the
# binaries as shipped, packaging/build-bins.sh; the tests then run those) as runtime
# "mlenv" and makes it the default runtime, so compose files that never name it still
# go through it. Both engines get MLENV_CONFIG, which the runtime inherits through
# containerd's shim: the tests write their policy there.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
run=/run/mlenv-e2e
data=/var/lib/mlenv-e2e
bin=${MLENV_BIN_DIR:-$repo/target/debug}
policy=$run/policy/mlenv.toml

wait_for() { # what, command...: polls until the command succeeds, 60 s at most
    local what=$1; shift
    for _ in $(seq 1 600); do
        if "$@" >/dev/null 2>&1; then return 0; fi
        sleep 0.1
    done
    echo "e2e-env: $what did not come up; its log:" >&2
    return 1
}

start() {
    if [ ! -x "$bin/mlenv-runtime" ]; then
        echo "e2e-env: $bin/mlenv-runtime missing: run cargo build first" >&2
        exit 1
    fi
    # cargo test rebuilds target/debug, not a set built by packaging/build-bins.sh.
    local newer=
    if [ -n "${MLENV_BIN_DIR:-}" ]; then
        newer=$(find "$repo/shim" "$repo/hook" -name '*.rs' -newer "$bin/mlenv-runtime" -print -quit)
    fi
    if [ -n "$newer" ]; then
        echo "e2e-env: warning: $newer is newer than $bin/mlenv-runtime: the engines run an older build (packaging/build-bins.sh again)" >&2
    fi
    stop quiet
    # Drop-ins a test run left behind would change the baseline below.
    rm -rf "$run/policy/conf.d"
    mkdir -p "$run/policy" "$run/bin" "$data"
    cat >"$run/bin/nvidia-container-runtime-hook" <<'HOOK'
#!/bin/sh
# Stub of NVIDIA's prestart hook for the e2e engines: reads the OCI state, does nothing.
cat >/dev/null
exit 0
HOOK
    chmod 755 "$run/bin/nvidia-container-runtime-hook"
    cat >"$policy" <<TOML
# Baseline policy of the e2e engines; tests overwrite this file.
[inventory]
path = "$run/inventory/mlenv.db"
[admission]
max_load_per_cpu = false
max_psi_cpu = false
TOML
    # With the call_timer example built (tests/bench.sh builds it): runtimes
    # "timed-runc" and "timed-mlenv", which time each call the engine makes.
    local timed=$run/timed extra=""
    rm -rf "$timed"
    if [ -x "$bin/examples/call_timer" ]; then
        mkdir -p "$timed"
        ln -s "$(command -v runc)" "$timed/runc"
        ln -s "$bin/mlenv-runtime" "$timed/mlenv-runtime"
        cp "$bin/examples/call_timer" "$timed/timed-runc"
        cp "$bin/examples/call_timer" "$timed/timed-mlenv-runtime"
        extra=", \"timed-runc\": { \"path\": \"$timed/timed-runc\" }, \"timed-mlenv\": { \"path\": \"$timed/timed-mlenv-runtime\" }"
    fi
    cat >"$run/daemon.json" <<JSON
{
  "runtimes": { "mlenv": { "path": "$bin/mlenv-runtime" }$extra },
  "default-runtime": "mlenv"
}
JSON
    MLENV_CONFIG=$policy setsid containerd \
        --address "$run/containerd.sock" \
        --root "$data/containerd" \
        --state "$run/containerd" \
        >"$run/containerd.log" 2>&1 </dev/null &
    echo $! >"$run/containerd.pid"
    wait_for containerd ctr --address "$run/containerd.sock" version || { tail -20 "$run/containerd.log" >&2; exit 1; }

    : >"$run/dockerd.log"
    start_dockerd

    cat >"$run/env" <<ENV
export MLENV_E2E_DOCKER_HOST=unix://$run/docker.sock
export MLENV_E2E_CONTAINERD=$run/containerd.sock
export MLENV_E2E_POLICY=$policy
export MLENV_E2E_BIN_DIR=$bin
ENV
    if [ -n "$extra" ]; then echo "export MLENV_E2E_TIMED=$timed" >>"$run/env"; fi
    cat "$run/env"
}

start_dockerd() {
    PATH=$run/bin:$PATH MLENV_CONFIG=$policy setsid dockerd \
        --containerd "$run/containerd.sock" \
        --data-root "$data/docker" \
        --exec-root "$run/docker" \
        --host "unix://$run/docker.sock" \
        --pidfile "$run/docker.pid" \
        --config-file "$run/daemon.json" \
        --bridge none --iptables=false --ip-masq=false \
        >>"$run/dockerd.log" 2>&1 </dev/null &
    wait_for dockerd docker --host "unix://$run/docker.sock" version || { tail -20 "$run/dockerd.log" >&2; exit 1; }
}

# kill -9 of dockerd alone (its containers live on under containerd), then a new
# dockerd on the same state: the fault injection tests' engine crash.
crash_dockerd() {
    local pid
    pid=$(cat "$run/docker.pid")
    kill -9 "$pid"
    for _ in $(seq 1 300); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    rm -f "$run/docker.pid"
    start_dockerd
}

stop() {
    local pidfile pid
    for pidfile in "$run/docker.pid" "$run/containerd.pid"; do
        [ -f "$pidfile" ] || continue
        pid=$(cat "$pidfile")
        if kill "$pid" 2>/dev/null; then
            # Wait for it to exit (dockerd stops its containers first).
            for _ in $(seq 1 300); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
            kill -9 "$pid" 2>/dev/null || true
        fi
        rm -f "$pidfile"
    done
    # Leftover shims and containers of these engines only.
    pkill -f "containerd-shim.*-address $run/containerd.sock" 2>/dev/null || true
    if mountpoint -q "$run/docker" 2>/dev/null; then umount -l "$run/docker" || true; fi
    [ "${1:-}" = quiet ] || echo "e2e-env: stopped"
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    crash-dockerd) crash_dockerd ;;
    *) echo "usage: $0 start|stop|crash-dockerd" >&2; exit 2 ;;
esac
