"""Recompute the CTC batches of `engine/examples/ctc_random.rs` with PyTorch.

Reads the example's JSON document (a file, or stdin for `-`), computes each batch's
`F.ctc_loss(log_softmax(logits))` in float64 on the CPU with the batch's targets, lengths,
blank, reduction and zero_infinity, and its gradient with respect to the logits (of the
summed losses for reduction 'none'), and prints per batch the largest absolute differences
of the losses and of the gradients. Exits with status 1 when any entry differs by more than
atol + rtol * |PyTorch's value|.

Usage: python scripts/torch_ctc.py RESULTS.json [--atol 1e-9] [--rtol 1e-7]
"""
import argparse
import json
import math
import sys

import torch
import torch.nn.functional as F


def compare(b):
    """(max |Δ loss|, max |Δ grad|, whether all within tolerance) of one batch."""
    t, n, c = b["shape"]
    logits = torch.tensor(b["logits"], dtype=torch.float64).reshape(t, n, c)
    logits.requires_grad_(True)
    loss = F.ctc_loss(
        logits.log_softmax(2),
        torch.tensor(b["targets"], dtype=torch.long),
        torch.tensor(b["input_lengths"], dtype=torch.long),
        torch.tensor(b["target_lengths"], dtype=torch.long),
        blank=b["blank"],
        reduction=b["reduction"],
        zero_infinity=b["zero_infinity"],
    )
    loss.sum().backward()
    # JSON has no infinity: serde_json writes a non-finite loss as null.
    ours_loss = torch.tensor(
        [math.inf if v is None else v for v in b["loss"]], dtype=torch.float64
    )
    ours_grad = torch.tensor(b["grad"], dtype=torch.float64)
    theirs_loss = loss.detach().reshape(-1)
    theirs_grad = logits.grad.reshape(-1)

    def diff(ours, theirs):
        same = ours == theirs  # equal infinities compare equal
        d = torch.where(same, torch.zeros_like(ours), (ours - theirs).abs())
        ok = bool((same | (d <= args.atol + args.rtol * theirs.abs())).all())
        return (d.max().item() if d.numel() else 0.0), ok

    dl, ok_l = diff(ours_loss, theirs_loss)
    dg, ok_g = diff(ours_grad, theirs_grad)
    return dl, dg, ok_l and ok_g


parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("results", help="JSON of ctc_random, or - for stdin")
parser.add_argument("--atol", type=float, default=1e-9)
parser.add_argument("--rtol", type=float, default=1e-7)
args = parser.parse_args()
batches = json.load(sys.stdin if args.results == "-" else open(args.results))
print(f"PyTorch {torch.__version__}, float64, CPU; tolerance atol {args.atol} + rtol {args.rtol}")
print("batch  T  N  C blank reduction zero_inf  max|Δ loss|  max|Δ grad|")
failed = 0
worst = [0.0, 0.0]
for i, b in enumerate(batches):
    dl, dg, ok = compare(b)
    worst = [max(worst[0], dl), max(worst[1], dg)]
    failed += not ok
    t, n, c = b["shape"]
    print(
        f"{i:5} {t:2} {n:2} {c:2} {b['blank']:5} {b['reduction']:>9} {str(b['zero_infinity']):>8}"
        f"  {dl:11.3e}  {dg:11.3e}{'' if ok else '  FAIL'}"
    )
print(f"{len(batches)} batches; largest differences: loss {worst[0]:.3e}, gradient {worst[1]:.3e}")
if failed:
    sys.exit(f"{failed} batches differ beyond the tolerance")
