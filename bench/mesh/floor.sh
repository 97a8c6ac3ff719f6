#!/usr/bin/env bash
# The floor under the proxy-CPU goal: the peer-lb harness with HAProxy, the mesh, and byte
# relays that do no HTTP work (floor/relay-epoll.c; floor/relay-uring.c when liburing's
# headers are installed), in the same run. The `floor-u1` and `floor-u2` columns are the epoll
# relay with 1 and 2 µs of busy user work per request added (SPIN_NS), which shows what each µs
# a proxy spends in user space costs it in all on this machine.
# Usage: bench/mesh/floor.sh [PEER_LB_DIR] [peer-lb run.sh options...]
# Needs gcc (and liburing-dev for the io_uring column); builds the mesh nothing: run
# `cargo xtask build-plugins && cargo build --release` first.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PEER="${1:-$HERE/../../../shared/bench/peer-lb}"; [[ $# -gt 0 ]] && shift
command -v gcc >/dev/null || { echo "missing tool: gcc" >&2; exit 2; }
WORK="$(mktemp -d "${TMPDIR:-/tmp}/evolve-mesh-floor.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
BACKENDS="18081 18082 18083"
gcc -O2 -o "$WORK/relay-epoll" "$HERE/floor/relay-epoll.c"
COLUMNS=(--columns haproxy-rr
  --extra floor=http://127.0.0.1:18480 --extra-cmd "floor=$WORK/relay-epoll 18480 $BACKENDS"
  --extra floor-u1=http://127.0.0.1:18481
  --extra-cmd "floor-u1=env SPIN_NS=500 $WORK/relay-epoll 18481 $BACKENDS"
  --extra floor-u2=http://127.0.0.1:18482
  --extra-cmd "floor-u2=env SPIN_NS=1000 $WORK/relay-epoll 18482 $BACKENDS")
if gcc -O2 -o "$WORK/relay-uring" "$HERE/floor/relay-uring.c" -luring 2>/dev/null; then
  COLUMNS+=(--extra floor-uring=http://127.0.0.1:18483
    --extra-cmd "floor-uring=$WORK/relay-uring 18483 $BACKENDS")
else
  echo "no io_uring column: liburing's headers are missing (apt-get install liburing-dev)" >&2
fi
"$HERE/run.sh" "$PEER" "${COLUMNS[@]}" "$@"
