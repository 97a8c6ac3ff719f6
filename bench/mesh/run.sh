#!/usr/bin/env bash
# Runs the shared peer-lb benchmark (HAProxy, nginx, direct) with the mesh as an extra column.
# Usage: [MESH_BASELINE=/path/to/old/evolve] bench/mesh/run.sh [PEER_LB_DIR] [run.sh options...]
#   PEER_LB_DIR defaults to ../shared/bench/peer-lb next to the repository.
#   MESH_BASELINE adds a column `mesh-base` run by that binary with the same configuration, so an
#   A/B of two builds is measured in one run (on a shared machine, compare only within a run).
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
COLUMNS=(--extra mesh=http://127.0.0.1:18380
  --extra-cmd "mesh=$BIN serve --config $WORK/evolve.toml --data-dir $WORK/data --plugins-dir $WORK/plugins --listen 127.0.0.1:18379")
if [[ -n "${MESH_BASELINE:-}" ]]; then
  [[ -x $MESH_BASELINE ]] || { echo "MESH_BASELINE=$MESH_BASELINE is not an executable" >&2; exit 2; }
  sed 's/127\.0\.0\.1:18380/127.0.0.1:18390/' "$HERE/mesh.toml" >"$WORK/base.toml"
  COLUMNS+=(--extra mesh-base=http://127.0.0.1:18390
    --extra-cmd "mesh-base=$MESH_BASELINE serve --config $WORK/base.toml --data-dir $WORK/base-data --plugins-dir $WORK/plugins --listen 127.0.0.1:18389")
fi
"$PEER/run.sh" "${COLUMNS[@]}" "$@"
