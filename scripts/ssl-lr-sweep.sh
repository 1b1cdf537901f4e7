#!/usr/bin/env bash
# The stability comparison of `ssl`: the pre-LN baseline, σReparam without LayerNorm and
# σReparam with pre-LN, each at its default learning rate and at 5×, trained the same
# number of steps; then charts of their losses and attention entropies side by side.
#
#   pre-ln                 AdamW lr 2e-3 and 1e-2 (100 warmup steps, weight decay 0.05)
#   sigma-reparam          SGD with momentum, lr 0.1 and 0.5 (no warmup, no weight decay)
#   sigma-reparam-pre-ln   AdamW lr 2e-3 and 1e-2 (as pre-ln)
#
# Each run goes to OUT/<variant>-lr<lr>/ (metrics.jsonl, summary.json with the linear probe's
# accuracy, plots; the checkpoint is removed to keep the directory small); the comparison
# charts go to OUT/compare_loss.svg and OUT/compare_entropy.svg (every run), and
# OUT/<variant>/compare_*.svg (one variant at both rates). Runs go two at a time on one
# thread each (results do not depend on the thread count); a run whose summary.json exists
# is skipped, so the script resumes where it stopped.
#
# Usage: scripts/ssl-lr-sweep.sh [--steps N] [--out DIR]
# Defaults: 1000 steps, OUT = docs/ssl/lr-sweep. Needs the Fashion-MNIST data (the first run
# fetches it as `ssl` does).
set -euo pipefail

cd "$(dirname "$0")/.."
steps=1000
out=docs/ssl/lr-sweep
while [ $# -gt 0 ]; do
    case "$1" in
        --steps) steps=$2; shift 2 ;;
        --out) out=$2; shift 2 ;;
        -h|--help) awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "$0"; exit 0 ;;
        *) echo "unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done

cargo build --release -p tasks --bin ssl --example compare_runs
ssl=target/release/ssl
# The data is fetched once, before runs start in parallel.
"$ssl" --steps 1 --controls false --probe-steps 1 --out "$out/.fetch" --overwrite --quiet
rm -rf "$out/.fetch"

run() { # variant lr
    local dir="$out/$1-lr$2"
    if [ -f "$dir/summary.json" ]; then
        echo "ssl-lr-sweep: $dir done"
        return
    fi
    echo "ssl-lr-sweep: $dir"
    # Exit status 3 (diverged) is an outcome, not a failure of the sweep.
    "$ssl" --variant "$1" --lr "$2" --steps "$steps" --eval-every 100 --threads 1 \
        --controls false --out "$dir" --overwrite --quiet || [ $? -eq 3 ]
    rm -f "$dir/checkpoint.safetensors"
}

pair() { # variant lr1 lr2
    run "$1" "$2" & local a=$!
    run "$1" "$3" & local b=$!
    wait "$a"
    wait "$b"
    target/release/examples/compare_runs --out "$out/$1" --unit "NT-Xent, nats per view" \
        "$1 lr $2=$out/$1-lr$2" "$1 lr $3=$out/$1-lr$3"
}

pair pre-ln 2e-3 1e-2
pair sigma-reparam 0.1 0.5
pair sigma-reparam-pre-ln 2e-3 1e-2
args=()
for d in "$out"/*-lr*/; do
    d=${d%/}
    args+=("$(basename "$d")=$d")
done
target/release/examples/compare_runs --out "$out" --unit "NT-Xent, nats per view" "${args[@]}"
echo "ssl-lr-sweep: wrote $out"
