#!/usr/bin/env bash
# Build times of the daemon, for each git revision given (default: HEAD), in one run:
#   1. a clean release build of the `evolve` binary (own target dir, dependencies already
#      downloaded, so the network is not timed);
#   2. the rebuild after touching one file of the CLI;
#   3. the rebuild after touching one file of the mesh.
# Usage: bench/build/times.sh [REV ...]   e.g.  bench/build/times.sh 9c67d07 HEAD
# Each revision is checked out into a temporary worktree; nothing in this checkout changes.
# Prints one markdown row per revision: rev, clean s, touch-CLI s, touch-mesh s.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
revs=("$@")
[ ${#revs[@]} -eq 0 ] && revs=(HEAD)
work="$(mktemp -d)"
trap 'for d in "$work"/wt-*; do git -C "$root" worktree remove --force "$d" >/dev/null 2>&1 || true; done; rm -rf "$work"' EXIT

seconds() { # runs "$@", prints its wall time in seconds
    local start end
    start=$(date +%s%N)
    "$@" >>"$work/build.log" 2>&1
    end=$(date +%s%N)
    awk -v ns=$((end - start)) 'BEGIN { printf "%.2f", ns / 1e9 }'
}

echo "| revision | clean release build, s | after touching the CLI, s | after touching the mesh, s |"
echo "|---|---|---|---|"
for rev in "${revs[@]}"; do
    sha=$(git -C "$root" rev-parse --short "$rev")
    tree="$work/wt-$sha"
    git -C "$root" worktree add --detach "$tree" "$rev" >/dev/null 2>&1
    # The layout before the crate split: one crate `evolve-host` under host/src.
    if [ -d "$tree/host/src/cli" ]; then
        package=evolve-host; cli=host/src/cli/model.rs; mesh=host/src/mesh/listener.rs
    else
        package=evolve-daemon; cli=host/daemon/src/cli/serve.rs; mesh=host/mesh/src/listener/mod.rs
    fi
    build=(env CARGO_TARGET_DIR="$work/target-$sha" cargo build --release --quiet
        --manifest-path "$tree/Cargo.toml" -p "$package" --bin evolve)
    (cd "$tree" && cargo fetch --quiet)
    clean=$(seconds "${build[@]}")
    [ -f "$tree/$cli" ] && [ -f "$tree/$mesh" ] || { echo "missing $cli or $mesh in $rev" >&2; exit 1; }
    touch "$tree/$cli"
    touched_cli=$(seconds "${build[@]}")
    touch "$tree/$mesh"
    touched_mesh=$(seconds "${build[@]}")
    printf '| %s | %.0f | %.1f | %.1f |\n' "$sha" "$clean" "$touched_cli" "$touched_mesh"
    rm -rf "$work/target-$sha"
done
