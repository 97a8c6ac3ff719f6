#!/usr/bin/env bash
# Cluster benchmark: event propagation between two daemons (p50 / p99) and catalog
# convergence with N services, against a private redis-server on a free loopback port.
# Usage: bench/cluster/run.sh [--rounds 200] [--services 1000]
set -euo pipefail
cd "$(dirname "$0")/../.."
command -v redis-server >/dev/null || { echo "redis-server is missing: apt-get install redis-server" >&2; exit 1; }
cargo build --release -p evolve-daemon --bin evolve -p evolve-e2e --bin cluster-bench
exec target/release/cluster-bench "$@"
