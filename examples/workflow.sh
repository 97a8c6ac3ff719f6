#!/bin/sh
# The seed's "complete workflow" against a running demo (`cargo xtask serve`), through the
# public API and the `evolve` CLI only:
#   1. system health   2. the best forecasting model   3. a routed forecast   4. documentation
#
# Usage: examples/workflow.sh            (from the repository root, with the demo running)
# Env:   EVOLVE_API (default http://127.0.0.1:7070), EVOLVE (default ./target/release/evolve),
#        SYMBOL (default ACME), HORIZON (default 7).
# Exits non-zero at the first step that fails; the end-to-end test `demo` runs this script.
set -eu

API="${EVOLVE_API:-http://127.0.0.1:7070}"
EVOLVE="${EVOLVE:-./target/release/evolve}"
SYMBOL="${SYMBOL:-ACME}"
HORIZON="${HORIZON:-7}"
export EVOLVE_API="$API"
scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT

# 1. System health: the first line of `evolve health` ("system: healthy"); exit 1 if unhealthy.
"$EVOLVE" health > "$scratch/health"
echo "System health: $(sed -n 's/^system: //p' "$scratch/health")"

# 2. Best forecasting model under the daemon's default policy, with the reason.
"$EVOLVE" model best --task forecast > "$scratch/best"
echo "Best model: $(sed -n 's/^best forecast model under policy [^:]*: //p' "$scratch/best")"
echo "  why: $(sed -n 2p "$scratch/best")"

# 3. A forecast routed through the mesh: who served it, with which model, how well it backtests.
status="$(curl -s -o "$scratch/body" -D "$scratch/headers" -w '%{http_code}' \
    -H 'content-type: application/json' \
    -d "{\"symbol\": \"$SYMBOL\", \"horizon\": $HORIZON}" "$API/v1/route/forecast")"
header() { sed -n "s/^$1: //Ip" "$scratch/headers" | tr -d '\r'; }
model="$(header x-evolve-model)"
version="$(header x-evolve-model-version)"
echo "Forecast response: $status from $(header x-evolve-service)/$(header x-evolve-instance)," \
    "model ${model:-(none: the route sent no model)}${version:+ v$version}"
echo "  backtest: $(header x-evolve-outcome)"
[ "$status" = 200 ]

# 4. Documentation of the live system, written by the doc-generator agent.
"$EVOLVE" system documentation > "$scratch/docs"
echo "Documentation generated: $(sed -n 's/^run [0-9]* (.* ms): //p' "$scratch/docs" | head -n 1)"
