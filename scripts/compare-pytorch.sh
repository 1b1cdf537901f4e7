#!/usr/bin/env bash
# Side-by-side speed of one training step (forward, backward, clip, optimizer step,
# zero_grad) in this engine and in PyTorch CPU eager, on the same model, batches of the same
# shape, the same initialization scheme and the same optimizer, for one --task:
#   lm (default): the `lm` character-level GPT on random token batches, AdamW
#     ours:   cargo run --release -p tasks --example lm_step
#     theirs: scripts/torch_lm_step.py
#   vit: the `classification` ViT on random 28×28 images; SGD with momentum for
#     sigma-reparam (σReparam without LayerNorm), AdamW for the other variants
#     ours:   cargo run --release -p tasks --example vit_step
#     theirs: scripts/torch_vit_step.py
# The PyTorch side is CPU PyTorch from PyPI in a local virtual environment; both of its
# scripts build on scripts/torch_models.py. Each PyTorch run is given the model shape that
# the preceding run of ours reported in its JSON line (lm: batch_size seq_len d_model
# n_layers n_heads vocab; vit: batch_size patch_size d_model n_layers n_heads mlp_ratio) as
# flags, so both sides time the same model whatever their defaults; the table flags any
# variant whose parameter counts still differ.
#
# For each thread count and variant the two programs alternate (A B A B …). During every run
# the script records how much CPU other processes used (busy time of /proc/stat minus the
# run's own CPU time) and repeats a run during which others used more than --busy-pct of a
# core. It prints each side's median ms/step, throughput (tokens/s for lm, images/s for vit)
# and peak RSS, and the ratios.
#
# Usage: scripts/compare-pytorch.sh [--task lm|vit] [--steps N] [--warmup-steps N]
#          [--pairs P] [--threads "1 2"] [--variants "pre-ln sigma-reparam"]
#          [--busy-pct 20] [--max-tries 4] [--venv DIR] [--out DIR]
# Needs python3 (with venv or pip) and cargo. The first run installs PyPI's `torch` wheel
# (it brings CUDA libraries, several GB) into --venv (default .venv-compare). Every run's
# JSON line and the table go to --out (default runs/compare-pytorch-<task>-<UTC time>/).
# The environment is set up by scripts/torch-venv.sh, which scripts/compare-ctc.sh shares.
set -euo pipefail

cd "$(dirname "$0")/.."
task=lm
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
        --task) task=$2; shift 2 ;;
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
case "$task" in
    lm|vit) ;;
    *) echo "--task must be lm or vit, got '$task'" >&2; exit 2 ;;
esac
example=${task}_step              # tasks/examples/<example>.rs
torch_script=scripts/torch_${task}_step.py
out=${out:-runs/compare-pytorch-$task-$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$out"
results="$out/runs.jsonl"
: > "$results"

# --- PyTorch in a local virtual environment -----------------------------------------------
. scripts/torch-venv.sh
torch_venv "$venv"

# --- this engine, release build -----------------------------------------------------------
echo "== building the Rust example $example (release) =="
cargo build --release -p tasks --example "$example"
ours_bin="${CARGO_TARGET_DIR:-target}/release/examples/$example"

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

# shape_flags JSON: the model-shape flags of the PyTorch script with the values of ours'
# JSON line; fails for a ViT the PyTorch twin does not build (other images or pooling).
shape_flags() {
    python3 - "$task" "$1" <<'EOF'
import json, sys

task, r = sys.argv[1], json.loads(sys.argv[2])
fields = {
    "lm": ["batch_size", "seq_len", "d_model", "n_layers", "n_heads", "vocab"],
    "vit": ["batch_size", "patch_size", "d_model", "n_layers", "n_heads", "mlp_ratio"],
}[task]
if task == "vit":
    for key, want in (("image_size", 28), ("pooling", "mean")):
        if r.get(key, want) != want:
            sys.exit(f"scripts/torch_vit_step.py builds {key} {want} only; ours ran {r[key]}")
missing = [k for k in fields if k not in r]
if missing:
    sys.exit(f"ours' JSON line lacks {', '.join(missing)}")
print(" ".join(f"--{k.replace('_', '-')} {r[k]}" for k in fields))
EOF
}

# run_once SIDE VARIANT THREADS PAIR: run until the machine was quiet enough (or --max-tries).
# A PyTorch run takes its model shape from the last run of ours (ours_json).
ours_json=""
run_once() {
    local side=$1 variant=$2 threads=$3 pair=$4 try json status flags
    local -a cmd shape
    if [ "$side" = ours ]; then
        cmd=("$ours_bin")
    else
        flags=$(shape_flags "$ours_json") || exit 1
        read -r -a shape <<< "$flags"
        cmd=("$py" "$torch_script" "${shape[@]}")
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
        [ "$side" = ours ] && ours_json=$json
        $busy || return 0
    done
    echo "  still busy after $max_tries tries; keeping the last run (flagged busy)"
}

echo "== $task: alternating runs: $pairs pairs × threads {$threads_list} × variants {$variants}, $steps steps each =="
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
python3 - "$results" "$machine" "$busy_pct" "$task" "$example" <<'EOF' | tee "$out/summary.txt"
import json, statistics, sys

path, machine, busy_pct, task, example = sys.argv[1:6]
busy_pct = float(busy_pct)
# The throughput field of each task's JSON lines and its short name in the table.
rate, unit, items = {
    "lm": ("tokens_per_s", "tok/s", "tokens"),
    "vit": ("images_per_s", "img/s", "images"),
}[task]
runs = [json.loads(line) for line in open(path)]
# Keep the last try of each run (earlier tries were repeated because the machine was busy).
last = {}
for r in runs:
    res = r["result"]
    last[(r["side"], res["variant"], res["threads"], r["pair"])] = r
keys = sorted({(k[1], k[2]) for k in last}, key=lambda k: (k[1], k[0]))
med = statistics.median
some = next(iter(last.values()))["result"]
field = lambda key: some.get(key, "?")
print()
print(f"Machine: {machine}")
if task == "lm":
    model = (f"d_model {field('d_model')}, {field('n_layers')} layers, "
             f"{field('n_heads')} heads, batch {field('batch_size')} x {field('seq_len')} "
             f"tokens, vocab {field('vocab')}")
else:
    px, p = some.get("image_size", 28), some.get("patch_size")
    tokens = (px // p) ** 2 if isinstance(p, int) and p > 0 else "?"
    model = (f"ViT, {px}x{px}x1 images in {p}x{p} patches ({tokens} tokens), "
             f"d_model {field('d_model')}, {field('n_layers')} layers, "
             f"{field('n_heads')} heads, MLP ratio {field('mlp_ratio')}, "
             f"{some.get('pooling', 'mean')} pooling, batch {field('batch_size')} images, "
             f"10 classes")
print(f"Model: {model}; {field('steps')} timed steps per run after "
      f"{field('warmup_steps')} warm-up steps")
versions = {r["side"]: r["result"]["version"] for r in last.values()}
print(f"ours: tasks {example} {versions.get('ours')}; PyTorch {versions.get('pytorch')} (CPU, eager)")
print("Per side: median over runs of each run's median step; RSS = max over runs of VmHWM.")
print()
hdr = ("threads", "variant", "ours ms", "torch ms", f"ours {unit}", f"torch {unit}",
       "ours RSS MiB", "torch RSS MiB", f"{unit} ratio", "RSS ratio", "others %core", "busy runs")
print("| " + " | ".join(hdr) + " |")
print("|" + "|".join("---" for _ in hdr) + "|")
mismatched = []
for variant, threads in keys:
    side = {}
    for s in ("ours", "pytorch"):
        rs = [r for k, r in last.items() if k[:3] == (s, variant, threads)]
        side[s] = {
            "ms": med(r["result"]["median_ms"] for r in rs),
            "rate": med(r["result"][rate] for r in rs),
            "rss": max(r["result"]["peak_rss_mib"] for r in rs),
            "others": [r["others_pct_core"] for r in rs],
            "busy": sum(r["busy"] for r in rs),
            "n": len(rs),
            "params": {r["result"]["parameters"] for r in rs},
        }
    o, t = side["ours"], side["pytorch"]
    if o["params"] != t["params"]:
        mismatched.append(f"{variant} at {threads} threads: ours {sorted(o['params'])}, "
                          f"PyTorch {sorted(t['params'])}")
    others = o["others"] + t["others"]
    print(f"| {threads} | {variant} | {o['ms']:.1f} | {t['ms']:.1f} | {o['rate']:.0f} | "
          f"{t['rate']:.0f} | {o['rss']:.0f} | {t['rss']:.0f} | {o['rate'] / t['rate']:.2f} | "
          f"{o['rss'] / t['rss']:.2f} | {med(others):.0f} (max {max(others)}) | "
          f"{o['busy'] + t['busy']} of {o['n'] + t['n']} |")
print()
print(f"{unit} ratio = ours / PyTorch {items} per second (> 1: ours faster); "
      "RSS ratio = ours / PyTorch peak resident memory (< 1: ours smaller).")
print(f"A run is busy when other processes used more than {busy_pct:.0f}% of a core during it; "
      "busy runs were repeated, and any still listed were busy on every try.")
if mismatched:
    print("WARNING: the two sides' models differ in parameter count, so these rows compare "
          "different models:")
    for m in mismatched:
        print(f"  {m}")
EOF
echo "runs: $results; table: $out/summary.txt"
