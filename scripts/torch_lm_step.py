#!/usr/bin/env python3
"""PyTorch (CPU, eager) twin of `cargo run --release -p tasks --example lm_step`.

Builds the same character-level GPT as nn/src/transformer.rs (token + learned position
embeddings, blocks of causal self-attention with separate q/k/v/proj linears and a GELU
(tanh) MLP, LayerNorm pre/post/none, linear head; every linear plain or σReparam), with the
same initialization scheme, the same AdamW parameter groups and hyper-parameters as
tasks/src/lm.rs and gradient clipping at 1, then times training steps (forward, backward,
clip, AdamW, zero_grad) on seeded random token batches and prints one JSON line:

    {"impl": "pytorch", ..., "median_ms": ..., "tokens_per_s": ..., "peak_rss_mib": ...}

The layers, optimizer groups, timing loop and JSON line are scripts/torch_models.py's,
shared with scripts/torch_vit_step.py.

Usage: python3 scripts/torch_lm_step.py --variant pre-ln --steps 10 --threads 2
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

# tasks/src/lm.rs: Lm::defaults, the peak learning rate of each variant (AdamW, weight decay
# 0.01 on matrices).
LR = {
    "pre-ln": 1e-3,
    "post-ln": 1e-3,
    "sigma-reparam": 1e-2,
    "sigma-reparam-pre-ln": 3e-3,
    "sigma-reparam-post-ln": 3e-3,
}
WEIGHT_DECAY = 0.01


class Gpt(nn.Module):
    def __init__(self, vocab, block_size, d, n_layers, n_heads, norm, sigma_reparam, gen):
        super().__init__()
        make = linear_maker(sigma_reparam, gen)
        self.tok_emb = nn.Embedding(vocab, d)
        self.pos_emb = nn.Embedding(block_size, d)
        with torch.no_grad():
            self.tok_emb.weight.normal_(0.0, 1.0, generator=gen)
            self.pos_emb.weight.normal_(0.0, 1.0, generator=gen)
        self.blocks = nn.ModuleList(
            Block(d, n_heads, norm, make, causal=True, block_size=block_size)
            for _ in range(n_layers)
        )
        self.ln_f = nn.LayerNorm(d, eps=1e-5) if norm == "pre" else None
        self.head = make(d, vocab)

    def loss(self, ids, targets):
        t = ids.shape[1]
        x = self.tok_emb(ids) + self.pos_emb.weight[:t]
        for block in self.blocks:
            x = block(x)
        if self.ln_f is not None:
            x = self.ln_f(x)
        logits = self.head(x)
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_args(ap, LAYOUTS)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--d-model", type=int, default=256)
    ap.add_argument("--n-layers", type=int, default=4)
    ap.add_argument("--n-heads", type=int, default=4)
    ap.add_argument("--vocab", type=int, default=80, help="80: the fetched Shakespeare corpus")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    if min(a.steps, a.batch_size, a.seq_len, a.d_model, a.n_heads, a.vocab, a.threads) < 1:
        ap.error("sizes, --steps and --threads must be positive")

    torch.set_num_threads(a.threads)
    norm, sigma_reparam = LAYOUTS[a.variant]
    gen = torch.Generator().manual_seed(a.seed)
    model = Gpt(
        a.vocab, a.seq_len, a.d_model, a.n_layers, a.n_heads, norm, sigma_reparam, gen
    )
    model.train()
    params, opt = build_optimizer(model, "adamw", LR[a.variant], weight_decay=WEIGHT_DECAY)

    data_gen = torch.Generator().manual_seed(a.seed + 1)
    shape = (a.batch_size, a.seq_len)

    def next_batch():
        ids = torch.randint(0, a.vocab, shape, generator=data_gen)
        targets = torch.randint(0, a.vocab, shape, generator=data_gen)
        return ids, targets

    times, losses = time_steps(next_batch, model.loss, params, opt, a.warmup_steps, a.steps)
    model_fields = {
        "batch_size": a.batch_size,
        "seq_len": a.seq_len,
        "d_model": a.d_model,
        "n_layers": a.n_layers,
        "n_heads": a.n_heads,
        "vocab": a.vocab,
    }
    print_result(
        a, model_fields, params, times, losses, "tokens_per_s", a.batch_size * a.seq_len
    )


if __name__ == "__main__":
    main()
