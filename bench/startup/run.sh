#!/usr/bin/env bash
# Start-up benchmark: a daemon with N cached plugins, time from spawn until the API answers and
# until every plugin serves, loading one per core vs one at a time, alternating in one run.
# Usage: bench/startup/run.sh [--plugins 50] [--rounds 5]
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo xtask build-plugins
cargo build --release -p evolve-daemon --bin evolve -p evolve-e2e --bin startup-bench
exec target/release/startup-bench "$@"
