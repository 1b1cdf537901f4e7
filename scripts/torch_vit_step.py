#!/usr/bin/env python3
"""PyTorch (CPU, eager) twin of `cargo run --release -p tasks --example vit_step`.

Builds the ViT image classifier of the `classification` task: 28×28 single-channel images
cut into non-overlapping p×p patches, each flattened in (channel, row, column) order and
mapped by one linear layer (a stride-p Conv2d(1, d, p)), plus learned position embeddings
[n_patches, d] drawn from N(0, 0.02²); blocks of bidirectional self-attention (separate
q/k/v/proj linears, no mask) and a GELU (tanh) MLP of width mlp_ratio·d with LayerNorm
pre/post/none, a final LayerNorm when pre-LN, mean pooling over the tokens and a linear
head to 10 classes; every linear (patch embedding and head included) plain or σReparam.
Trains with cross-entropy on seeded random normal images and random labels with the optimizer
of tasks/src/classification.rs (Classification::defaults): σReparam without LayerNorm
(sigma-reparam) SGD with momentum 0.9, lr 0.1 and no weight decay; every other variant
AdamW, lr 1e-3, weight decay 0.05 on matrices; gradient clipping at 1 for all. Times training
steps (forward, backward, clip, optimizer step, zero_grad) and prints one JSON line:

    {"impl": "pytorch", ..., "median_ms": ..., "images_per_s": ..., "peak_rss_mib": ...}

The layers, optimizer groups, timing loop and JSON line are scripts/torch_models.py's,
shared with scripts/torch_lm_step.py.

Usage: python3 scripts/torch_vit_step.py --variant pre-ln --steps 10 --threads 2
"""

import argparse

import torch
import torch.nn.functional as F
from torch import nn

from torch_models import (
    LAYOUTS,
    Block,
    add_common_args,
    build_optimizer,
    linear_maker,
    print_result,
    time_steps,
)

IMAGE_SIZE = 28
CHANNELS = 1
CLASSES = 10
POS_STD = 0.02


def recipe(variant):
    """(optimizer, learning rate, weight decay on matrices) of a variant, as
    tasks/src/classification.rs Classification::defaults: the paper's simplified recipe (SGD)
    for σReparam without LayerNorm, the baselines' AdamW for the others, σReparam with
    LayerNorm included."""
    norm, sigma_reparam = LAYOUTS[variant]
    if sigma_reparam and norm == "none":
        return "sgd", 0.1, 0.0
    return "adamw", 1e-3, 0.05


class Vit(nn.Module):
    def __init__(self, patch, d, n_layers, n_heads, mlp_ratio, norm, sigma_reparam, gen):
        super().__init__()
        make = linear_maker(sigma_reparam, gen)
        self.patch = patch
        n_patches = (IMAGE_SIZE // patch) ** 2
        self.patch_proj = make(CHANNELS * patch * patch, d)
        self.pos_emb = nn.Parameter(torch.empty(n_patches, d).normal_(0.0, POS_STD, generator=gen))
        self.blocks = nn.ModuleList(
            Block(d, n_heads, norm, make, mlp_ratio=mlp_ratio) for _ in range(n_layers)
        )
        self.ln_f = nn.LayerNorm(d, eps=1e-5) if norm == "pre" else None
        self.head = make(d, CLASSES)

    def patchify(self, images):
        """[b, c, h, w] → [b, (h/p)·(w/p), c·p·p]: patches row-major, each flattened
        channel, then row, then column (a Conv2d kernel [d, c, p, p] flattened)."""
        b, c, h, w = images.shape
        p = self.patch
        x = images.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 1, 3, 5)
        return x.reshape(b, (h // p) * (w // p), c * p * p)

    def loss(self, images, labels):
        x = self.patch_proj(self.patchify(images)) + self.pos_emb
        for block in self.blocks:
            x = block(x)
        if self.ln_f is not None:
            x = self.ln_f(x)
        logits = self.head(x.mean(dim=1))
        return F.cross_entropy(logits, labels)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_args(ap, LAYOUTS)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--patch-size", type=int, default=7, help="must divide 28")
    ap.add_argument("--d-model", type=int, default=128)
    ap.add_argument("--n-layers", type=int, default=4)
    ap.add_argument("--n-heads", type=int, default=4, help="must divide --d-model")
    ap.add_argument("--mlp-ratio", type=int, default=2, help="MLP hidden width / d_model")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    sizes = (a.steps, a.batch_size, a.patch_size, a.d_model, a.n_heads, a.mlp_ratio, a.threads)
    if min(sizes) < 1 or a.n_layers < 0 or a.warmup_steps < 0:
        ap.error("sizes, --steps and --threads must be positive")
    if IMAGE_SIZE % a.patch_size:
        ap.error(f"--patch-size {a.patch_size} does not divide the image size {IMAGE_SIZE}")
    if a.d_model % a.n_heads:
        ap.error(f"--n-heads {a.n_heads} does not divide --d-model {a.d_model}")

    torch.set_num_threads(a.threads)
    norm, sigma_reparam = LAYOUTS[a.variant]
    gen = torch.Generator().manual_seed(a.seed)
    model = Vit(
        a.patch_size, a.d_model, a.n_layers, a.n_heads, a.mlp_ratio, norm, sigma_reparam, gen
    )
    model.train()
    kind, lr, weight_decay = recipe(a.variant)
    params, opt = build_optimizer(model, kind, lr, weight_decay=weight_decay, momentum=0.9)

    data_gen = torch.Generator().manual_seed(a.seed + 1)

    def next_batch():
        shape = (a.batch_size, CHANNELS, IMAGE_SIZE, IMAGE_SIZE)
        images = torch.randn(shape, generator=data_gen)
        labels = torch.randint(0, CLASSES, (a.batch_size,), generator=data_gen)
        return images, labels

    times, losses = time_steps(next_batch, model.loss, params, opt, a.warmup_steps, a.steps)
    model_fields = {
        "batch_size": a.batch_size,
        "image_size": IMAGE_SIZE,
        "patch_size": a.patch_size,
        "d_model": a.d_model,
        "n_layers": a.n_layers,
        "n_heads": a.n_heads,
        "mlp_ratio": a.mlp_ratio,
        "pooling": "mean",
    }
    print_result(a, model_fields, params, times, losses, "images_per_s", a.batch_size)


if __name__ == "__main__":
    main()
