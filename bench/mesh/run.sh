#!/usr/bin/env bash
# Runs the shared peer-lb benchmark (HAProxy, nginx, direct) with the mesh as an extra column.
# Usage: bench/mesh/run.sh [PEER_LB_DIR] [run.sh options...]
#   PEER_LB_DIR defaults to ../shared/bench/peer-lb next to the repository.
# Builds nothing: run `cargo xtask build-plugins && cargo build --release` first.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
PEER="${1:-$ROOT/../shared/bench/peer-lb}"; [[ $# -gt 0 ]] && shift
BIN="$ROOT/target/release/evolve"
PLUGIN="$ROOT/target/plugins/bundled/http-health"
[[ -x $BIN ]] || { echo "missing $BIN: cargo build --release" >&2; exit 2; }
[[ -f $PLUGIN/plugin.toml ]] || { echo "missing $PLUGIN: cargo xtask build-plugins" >&2; exit 2; }
WORK="$(mktemp -d "${TMPDIR:-/tmp}/evolve-mesh-bench.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$WORK/plugins" && cp -r "$PLUGIN" "$WORK/plugins/"
cp "$HERE/mesh.toml" "$WORK/evolve.toml"
# One worker thread: run.sh pins the command to one CPU and tokio sizes its pool to the CPUs it may use.
"$PEER/run.sh" --extra mesh=http://127.0.0.1:18380 \
  --extra-cmd "mesh=$BIN serve --config $WORK/evolve.toml --data-dir $WORK/data --plugins-dir $WORK/plugins --listen 127.0.0.1:18379" \
  "$@"
