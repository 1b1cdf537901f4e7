#!/usr/bin/env bash
# Compare this engine's `ctc_loss` with PyTorch's `F.ctc_loss` on seeded random batches
# (various T, N, C, blanks, target lengths with repeats and zeros, input lengths down to 0,
# the three reductions, zero_infinity), in float64: the loss of ctc_loss(log_softmax(logits))
# and its gradient with respect to the logits.
#   ours:   cargo run -p engine --example ctc_random (writes the batches and results as JSON)
#   theirs: scripts/torch_ctc.py (recomputes them; prints the largest absolute differences
#           per batch and exits nonzero beyond atol 1e-9 + rtol 1e-7)
#
# Usage: scripts/compare-ctc.sh [--batches N] [--seed S] [--venv DIR] [--out FILE]
# Needs python3 (with venv or pip) and cargo. PyTorch comes from PyPI into --venv (default
# .venv-compare, shared with scripts/compare-pytorch.sh; see scripts/torch-venv.sh). The
# JSON goes to --out (default runs/compare-ctc-<UTC time>.json).
set -euo pipefail

cd "$(dirname "$0")/.."
batches=40
seed=0
venv=.venv-compare
out=""
while [ $# -gt 0 ]; do
    case "$1" in
        --batches) batches=$2; shift 2 ;;
        --seed) seed=$2; shift 2 ;;
        --venv) venv=$2; shift 2 ;;
        --out) out=$2; shift 2 ;;
        -h|--help) awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "$0"; exit 0 ;;
        *) echo "unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done
out=${out:-runs/compare-ctc-$(date -u +%Y%m%dT%H%M%SZ).json}
mkdir -p "$(dirname "$out")"

. scripts/torch-venv.sh
torch_venv "$venv"

cargo run -p engine --example ctc_random -- --batches "$batches" --seed "$seed" > "$out"
"$py" scripts/torch_ctc.py "$out"
