#!/usr/bin/env bash
# Where a proxy's CPU goes per request: user and kernel time (/proc/<pid>/stat), syscalls and
# context switches (perf stat), for HAProxy and the mesh under the same wrk load, pinned as the
# peer-lb harness pins them (wrk on cpu0; backends and proxy on cpu1). With PERF=1, also a
# `perf record` of the mesh, its top symbols printed.
# Usage: [PERF=1] bench/mesh/profile.sh [PEER_LB_DIR] [CONNS] [SECONDS]
# Builds nothing: run `cargo xtask build-plugins && cargo build --release` first.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
PEER="${1:-$ROOT/../shared/bench/peer-lb}"; CONNS="${2:-16}"; SECS="${3:-5}"
BIN="$ROOT/target/release/evolve"
PLUGIN="$ROOT/target/plugins/bundled/http-health"
for tool in haproxy nginx wrk perf taskset; do
  command -v "$tool" >/dev/null || { echo "missing tool: $tool" >&2; exit 2; }
done
[[ -x $BIN ]] || { echo "missing $BIN: cargo build --release" >&2; exit 2; }
[[ -f $PLUGIN/plugin.toml ]] || { echo "missing $PLUGIN: cargo xtask build-plugins" >&2; exit 2; }
WORK="$(mktemp -d "${TMPDIR:-/tmp}/evolve-mesh-profile.XXXXXX")"
PIDS=()
cleanup() { kill "${PIDS[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT
mkdir -p "$WORK/be/tmp" "$WORK/plugins" && cp -r "$PLUGIN" "$WORK/plugins/"
cp "$HERE/mesh.toml" "$WORK/evolve.toml"
taskset -c 1 nginx -p "$WORK/be/" -c "$PEER/conf/backends.nginx.conf" -e "$WORK/be/error.log" \
  -g "daemon off; worker_processes 1;" >/dev/null 2>&1 & PIDS+=($!)
HAPROXY_NBTHREAD=1 taskset -c 1 haproxy -f "$PEER/conf/haproxy.cfg" -db >"$WORK/haproxy.log" 2>&1 &
HAPROXY=$!; PIDS+=("$HAPROXY")
taskset -c 1 "$BIN" serve --config "$WORK/evolve.toml" --data-dir "$WORK/data" \
  --plugins-dir "$WORK/plugins" --listen 127.0.0.1:18379 >"$WORK/mesh.log" 2>&1 &
MESH=$!; PIDS+=("$MESH")
for port in 18081 18181 18380; do
  for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done
done
sleep 1 # HAProxy's first health checks
ticks() { awk '{print $14, $15}' "/proc/$1/stat"; }
measure() { # name pid url
  taskset -c 0 wrk -t2 -c"$CONNS" -d2s "$3" >/dev/null
  local u0 s0 u1 s1 out
  read -r u0 s0 < <(ticks "$2")
  perf stat -x, -e context-switches,raw_syscalls:sys_enter -p "$2" -o "$WORK/stat.$1" -- sleep "$SECS" >/dev/null 2>&1 &
  local stat=$!
  out=$(taskset -c 0 wrk -t2 -c"$CONNS" -d"${SECS}s" "$3")
  wait "$stat"
  read -r u1 s1 < <(ticks "$2")
  awk -v name="$1" -v hz="$(getconf CLK_TCK)" -v u=$((u1 - u0)) -v s=$((s1 - s0)) \
    -v req="$(awk '/requests in/{print $1}' <<<"$out")" \
    -v cs="$(awk -F, '/context-switches/{print $1}' "$WORK/stat.$1")" \
    -v sc="$(awk -F, '/sys_enter/{print $1}' "$WORK/stat.$1")" \
    'BEGIN { us = 1e6 / hz / req;
      printf "%-8s requests=%9d user_us=%5.2f sys_us=%5.2f total_us=%5.2f syscalls/req=%4.2f switches/req=%5.3f\n",
        name, req, u * us, s * us, (u + s) * us, sc / req, cs / req }'
}
echo "# conns=$CONNS, ${SECS}s per column; CPU-µs per request from /proc, counts from perf stat"
measure haproxy "$HAPROXY" http://127.0.0.1:18181/
measure mesh "$MESH" http://127.0.0.1:18380/
if [[ -n "${PERF:-}" ]]; then
  perf record -F 4999 -g -p "$MESH" -o "$WORK/perf.data" -- sleep "$SECS" >/dev/null 2>&1 &
  record=$!
  taskset -c 0 wrk -t2 -c"$CONNS" -d"${SECS}s" http://127.0.0.1:18380/ >/dev/null
  wait "$record"
  perf report -i "$WORK/perf.data" --no-children --sort dso,sym --stdio 2>/dev/null |
    grep -E '^ +[0-9.]+%' | head -30
fi
