#!/usr/bin/env bash
# Side-by-side speed of one `lm` training step (forward, backward, clip, AdamW, zero_grad)
# in this engine and in PyTorch CPU eager, on the same model, batches of the same shape, the
# same initialization scheme and the same optimizer:
#   ours:   cargo run --release -p tasks --example lm_step
#   theirs: scripts/torch_lm_step.py (CPU PyTorch from PyPI in a local virtual environment)
#
# For each thread count and variant the two programs alternate (A B A B …). During every run
# the script records how much CPU other processes used (busy time of /proc/stat minus the
# run's own CPU time) and repeats a run during which others used more than --busy-pct of a
# core. It prints each side's median ms/step, tokens/s and peak RSS, and the ratios.
#
# Usage: scripts/compare-pytorch.sh [--steps N] [--warmup-steps N] [--pairs P]
#          [--threads "1 2"] [--variants "pre-ln sigma-reparam"] [--busy-pct 20]
#          [--max-tries 4] [--venv DIR] [--out DIR]
# Needs python3 (with venv or pip) and cargo. The first run installs PyPI's `torch` wheel
# (it brings CUDA libraries, several GB) into --venv (default .venv-compare). Every run's
# JSON line and the table go to --out (default runs/compare-pytorch-<UTC time>/).
set -euo pipefail

cd "$(dirname "$0")/.."
steps=20
warmup=2
pairs=3
threads_list="1 2"
variants="pre-ln sigma-reparam"
busy_pct=20
max_tries=4
venv=.venv-compare
out=""
while [ $# -gt 0 ]; do
    case "$1" in
        --steps) steps=$2; shift 2 ;;
        --warmup-steps) warmup=$2; shift 2 ;;
        --pairs) pairs=$2; shift 2 ;;
        --threads) threads_list=$2; shift 2 ;;
        --variants) variants=$2; shift 2 ;;
        --busy-pct) busy_pct=$2; shift 2 ;;
        --max-tries) max_tries=$2; shift 2 ;;
        --venv) venv=$2; shift 2 ;;
        --out) out=$2; shift 2 ;;
        -h|--help) awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "$0"; exit 0 ;;
        *) echo "unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done
out=${out:-runs/compare-pytorch-$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$out"
results="$out/runs.jsonl"
: > "$results"

# --- PyTorch in a local virtual environment -----------------------------------------------
py="$venv/bin/python"
if ! { [ -x "$py" ] && "$py" -c 'import torch' 2>/dev/null; }; then
    echo "== installing CPU PyTorch from PyPI into $venv (large download) =="
    if [ ! -x "$py" ]; then
        # Debian's python3 lacks ensurepip unless python3-venv is installed: then create the
        # environment without pip and install into it with the system pip.
        if ! python3 -m venv "$venv" 2>/dev/null; then
            rm -rf "$venv"
            python3 -m venv --without-pip "$venv"
        fi
    fi
    if "$py" -m pip --version >/dev/null 2>&1; then
        "$py" -m pip install torch
    else
        python3 -m pip --python "$py" install torch
    fi
fi

# --- this engine, release build -----------------------------------------------------------
echo "== building the Rust example (release) =="
cargo build --release -p tasks --example lm_step
ours_bin="${CARGO_TARGET_DIR:-target}/release/examples/lm_step"

# --- one measured run ---------------------------------------------------------------------
# Busy jiffies of all CPUs (user nice system irq softirq steal) and the total, from /proc/stat.
read_stat() {
    local cpu user nice system idle iowait irq softirq steal rest
    read -r cpu user nice system idle iowait irq softirq steal rest < /proc/stat
    stat_busy=$((user + nice + system + irq + softirq + steal))
    stat_total=$((stat_busy + idle + iowait))
}
# CPU jiffies of this shell's waited-for children (cutime + cstime of /proc/$$/stat): after
# `wait`, the finished run's own CPU time over all of its threads is included.
read_children_cpu() {
    local line
    read -r line < /proc/$$/stat
    line=${line##*) }  # fields after the command name, starting at field 3
    local -a f
    read -r -a f <<< "$line"
    children_cpu=$((f[13] + f[14]))
}
ncpu=$(getconf _NPROCESSORS_ONLN)

# run_once SIDE VARIANT THREADS PAIR: run until the machine was quiet enough (or --max-tries).
run_once() {
    local side=$1 variant=$2 threads=$3 pair=$4 try json status
    local -a cmd
    if [ "$side" = ours ]; then
        cmd=("$ours_bin")
    else
        cmd=("$py" scripts/torch_lm_step.py)
    fi
    cmd+=(--variant "$variant" --steps "$steps" --warmup-steps "$warmup" --threads "$threads")
    for try in $(seq 1 "$max_tries"); do
        read_stat; local busy0=$stat_busy total0=$stat_total
        read_children_cpu; local own0=$children_cpu
        status=0
        json=$(OMP_NUM_THREADS=$threads MKL_NUM_THREADS=$threads "${cmd[@]}" 2>"$out/stderr.log") || status=$?
        read_stat
        read_children_cpu
        if [ "$status" -ne 0 ]; then
            echo "run failed ($status): ${cmd[*]}" >&2
            cat "$out/stderr.log" >&2
            exit 1
        fi
        local own=$((children_cpu - own0))
        local others=$((stat_busy - busy0 - own))
        local elapsed=$((stat_total - total0))
        # Others' CPU as a percentage of one core over the run's wall time.
        local others_pct=$((elapsed > 0 ? 100 * others * ncpu / elapsed : 0))
        others_pct=$((others_pct < 0 ? 0 : others_pct))
        local busy=false
        [ "$others_pct" -gt "$busy_pct" ] && busy=true
        local ms
        ms=$(sed -n 's/.*"median_ms": *\([0-9.]*\).*/\1/p' <<< "$json")
        LC_ALL=C printf '  %-7s %-14s threads %s pair %s try %s: %8.1f ms/step, others used %3s%% of a core%s\n' \
            "$side" "$variant" "$threads" "$pair" "$try" "$ms" "$others_pct" \
            "$($busy && echo ' (busy)' || true)"
        echo "{\"side\":\"$side\",\"pair\":$pair,\"try\":$try,\"others_pct_core\":$others_pct,\"busy\":$busy,\"own_cpu_jiffies\":$own,\"result\":$json}" >> "$results"
        $busy || return 0
    done
    echo "  still busy after $max_tries tries; keeping the last run (flagged busy)"
}

echo "== alternating runs: $pairs pairs × threads {$threads_list} × variants {$variants}, $steps steps each =="
for threads in $threads_list; do
    for variant in $variants; do
        for pair in $(seq 1 "$pairs"); do
            run_once ours "$variant" "$threads" "$pair"
            run_once pytorch "$variant" "$threads" "$pair"
        done
    done
done

# --- summary ------------------------------------------------------------------------------
machine="$(lscpu | sed -n 's/^Model name: *//p' | head -n1), $ncpu logical CPUs ($(lscpu | sed -n 's/^Core(s) per socket: *//p' | head -n1) cores per socket, $(lscpu | sed -n 's/^Thread(s) per core: *//p' | head -n1) threads per core), $(uname -sr)"
python3 - "$results" "$machine" "$busy_pct" <<'EOF' | tee "$out/summary.txt"
import json, statistics, sys

path, machine, busy_pct = sys.argv[1], sys.argv[2], float(sys.argv[3])
runs = [json.loads(line) for line in open(path)]
# Keep the last try of each run (earlier tries were repeated because the machine was busy).
last = {}
for r in runs:
    res = r["result"]
    last[(r["side"], res["variant"], res["threads"], r["pair"])] = r
keys = sorted({(k[1], k[2]) for k in last}, key=lambda k: (k[1], k[0]))
med = statistics.median
some = next(iter(last.values()))["result"]
print()
print(f"Machine: {machine}")
print(f"Model: d_model {some['d_model']}, {some['n_layers']} layers, {some['n_heads']} heads, "
      f"batch {some['batch_size']} x {some['seq_len']} tokens, vocab {some['vocab']}; "
      f"{some['steps']} timed steps per run after {some['warmup_steps']} warm-up steps")
versions = {r["side"]: r["result"]["version"] for r in last.values()}
print(f"ours: tasks lm_step {versions.get('ours')}; PyTorch {versions.get('pytorch')} (CPU, eager)")
print("Per side: median over runs of each run's median step; RSS = max over runs of VmHWM.")
print()
hdr = ("threads", "variant", "ours ms", "torch ms", "ours tok/s", "torch tok/s",
       "ours RSS MiB", "torch RSS MiB", "tok/s ratio", "RSS ratio", "others %core", "busy runs")
print("| " + " | ".join(hdr) + " |")
print("|" + "|".join("---" for _ in hdr) + "|")
for variant, threads in keys:
    side = {}
    for s in ("ours", "pytorch"):
        rs = [r for k, r in last.items() if k[:3] == (s, variant, threads)]
        side[s] = {
            "ms": med(r["result"]["median_ms"] for r in rs),
            "tps": med(r["result"]["tokens_per_s"] for r in rs),
            "rss": max(r["result"]["peak_rss_mib"] for r in rs),
            "others": [r["others_pct_core"] for r in rs],
            "busy": sum(r["busy"] for r in rs),
            "n": len(rs),
        }
    o, t = side["ours"], side["pytorch"]
    others = o["others"] + t["others"]
    print(f"| {threads} | {variant} | {o['ms']:.1f} | {t['ms']:.1f} | {o['tps']:.0f} | "
          f"{t['tps']:.0f} | {o['rss']:.0f} | {t['rss']:.0f} | {o['tps'] / t['tps']:.2f} | "
          f"{o['rss'] / t['rss']:.2f} | {med(others):.0f} (max {max(others)}) | "
          f"{o['busy'] + t['busy']} of {o['n'] + t['n']} |")
print()
print("tok/s ratio = ours / PyTorch tokens per second (> 1: ours faster); "
      "RSS ratio = ours / PyTorch peak resident memory (< 1: ours smaller).")
print(f"A run is busy when other processes used more than {busy_pct:.0f}% of a core during it; "
      "busy runs were repeated, and any still listed were busy on every try.")
EOF
echo "runs: $results; table: $out/summary.txt"
