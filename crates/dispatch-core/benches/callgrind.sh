#!/usr/bin/env bash
# Instructions per assignment of every dispatch scenario, counted by
# callgrind inside `Bench::tick` only (stable on a busy machine, unlike time).
# Usage: crates/dispatch-core/benches/callgrind.sh [TASKS] [STEPS] [BINARY]
set -euo pipefail
tasks=${1:-100000}
steps=${2:-2000}
bin=${3:-}
if [[ -z $bin ]]; then
    cargo build --quiet --release -p dispatch-core --example dispatch_steps
    bin=$(cargo metadata --format-version 1 --no-deps | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')/release/examples/dispatch_steps
fi
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
printf '%-24s %12s %14s\n' scenario assignments instr/assign
for s in round_robin weighted_round_robin random least_loaded consistent_hash failover \
    round_robin_labels least_loaded_labels round_robin_1000_lanes; do
    line=$(valgrind --tool=callgrind --callgrind-out-file="$out/$s" \
        --toggle-collect='*Bench*tick*' "$bin" "$s" "$tasks" "$steps" 2>/dev/null)
    assigned=$(sed -n 's/.*: \([0-9]*\) assignments.*/\1/p' <<<"$line")
    ir=$(sed -n 's/^summary: \([0-9]*\).*/\1/p' "$out/$s")
    printf '%-24s %12s %14s\n' "$s" "$assigned" "$((ir / (assigned > 0 ? assigned : 1)))"
done
