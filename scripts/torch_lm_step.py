#!/usr/bin/env python3
"""PyTorch (CPU, eager) twin of `cargo run --release -p tasks --example lm_step`.

Builds the same character-level GPT as nn/src/transformer.rs (token + learned position
embeddings, blocks of causal self-attention with separate q/k/v/proj linears and a GELU
(tanh) MLP, LayerNorm pre/post/none, linear head; every linear plain or σReparam), with the
same initialization scheme, the same AdamW parameter groups and hyper-parameters as
tasks/src/lm.rs and gradient clipping at 1, then times training steps (forward, backward,
clip, AdamW, zero_grad) on seeded random token batches and prints one JSON line:

    {"impl": "pytorch", ..., "median_ms": ..., "tokens_per_s": ..., "peak_rss_mib": ...}

Usage: python3 scripts/torch_lm_step.py --variant pre-ln --steps 10 --threads 2
"""

import argparse
import json
import math
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

# nn/src/linear.rs: power iteration at initialization stops when u moves by at most INIT_TOL.
INIT_TOL = 1e-6
INIT_MAX_ITERS = 500
# engine/src/sigma_reparam.rs: normalize(z) = z / max(|z|, NORM_EPS); scale γ / max(σ, SIGMA_EPS).
NORM_EPS = 1e-12
SIGMA_EPS = 1e-6

# tasks/src/lm.rs: Variant::layout and Variant::recipe (peak learning rate).
VARIANTS = {
    "pre-ln": ("pre", False, 1e-3),
    "post-ln": ("post", False, 1e-3),
    "sigma-reparam": ("none", True, 1e-2),
    "sigma-reparam-pre-ln": ("pre", True, 3e-3),
    "sigma-reparam-post-ln": ("post", True, 3e-3),
}


def uniform_weight_bias(in_f, out_f, gen):
    """PyTorch's default nn.Linear initialization, drawn explicitly: U[-1/√in, 1/√in)."""
    k = 1.0 / math.sqrt(in_f)
    w = torch.empty(out_f, in_f).uniform_(-k, k, generator=gen)
    b = torch.empty(out_f).uniform_(-k, k, generator=gen)
    return nn.Parameter(w), nn.Parameter(b)


class Linear(nn.Module):
    """y = x Wᵀ + b."""

    def __init__(self, in_f, out_f, gen):
        super().__init__()
        self.weight, self.bias = uniform_weight_bias(in_f, out_f, gen)

    def forward(self, x):
        return F.linear(x, self.weight, self.bias)


class SigmaReparamLinear(nn.Module):
    """y = (γ / max(σ, ε)) · x Wᵀ + b with σ = vᵀ W u from one power step per training
    forward (no gradient through u, v; the gradient flows through σ into W), as in
    Zhai et al. 2023, eq. (2). u, v start from power iteration run to convergence on W₀; γ₀ = σ(W₀)."""

    def __init__(self, in_f, out_f, gen):
        super().__init__()
        self.weight, self.bias = uniform_weight_bias(in_f, out_f, gen)
        w = self.weight.detach().double()
        u = F.normalize(torch.randn(in_f, generator=gen).double(), dim=0, eps=NORM_EPS)
        v = F.normalize(torch.randn(out_f, generator=gen).double(), dim=0, eps=NORM_EPS)
        for _ in range(INIT_MAX_ITERS):
            v = F.normalize(w @ u, dim=0, eps=NORM_EPS)
            u_next = F.normalize(w.t() @ v, dim=0, eps=NORM_EPS)
            moved = torch.linalg.vector_norm(u_next - u).item()
            u = u_next
            if moved <= INIT_TOL:
                break
        sigma = torch.dot(v, w @ u).reshape(1)
        self.register_buffer("u", u.float())
        self.register_buffer("v", v.float())
        self.register_buffer("sigma", sigma.float())
        self.gamma = nn.Parameter(sigma.float().clone())

    def forward(self, x):
        if self.training:
            with torch.no_grad():
                self.v.copy_(F.normalize(self.weight @ self.u, dim=0, eps=NORM_EPS))
                self.u.copy_(F.normalize(self.weight.t() @ self.v, dim=0, eps=NORM_EPS))
        sigma = torch.dot(self.v, self.weight @ self.u)
        if self.training:
            self.sigma.copy_(sigma.detach().reshape(1))
        scale = self.gamma / sigma.clamp_min(SIGMA_EPS)
        return F.linear(x, self.weight * scale, self.bias)


class CausalSelfAttention(nn.Module):
    def __init__(self, d, n_heads, block_size, make):
        super().__init__()
        self.q, self.k, self.v, self.proj = (make(d, d) for _ in range(4))
        self.n_heads = n_heads
        mask = torch.full((block_size, block_size), float("-inf")).triu(1)
        self.register_buffer("mask", mask, persistent=False)

    def forward(self, x):
        b, t, d = x.shape
        h, dh = self.n_heads, d // self.n_heads

        def heads(y):
            return y.view(b, t, h, dh).permute(0, 2, 1, 3)

        q = heads(self.q(x) * (1.0 / math.sqrt(dh)))
        k = heads(self.k(x))
        v = heads(self.v(x))
        p = (q @ k.transpose(2, 3) + self.mask[:t, :t]).softmax(dim=3)
        y = (p @ v).permute(0, 2, 1, 3).reshape(b, t, d)
        return self.proj(y)


class Mlp(nn.Module):
    def __init__(self, d, make):
        super().__init__()
        self.fc = make(d, 4 * d)
        self.proj = make(4 * d, d)

    def forward(self, x):
        return self.proj(F.gelu(self.fc(x), approximate="tanh"))


class Block(nn.Module):
    def __init__(self, d, n_heads, block_size, norm, make):
        super().__init__()
        self.attn = CausalSelfAttention(d, n_heads, block_size, make)
        self.mlp = Mlp(d, make)
        self.norm = norm
        if norm != "none":
            self.ln1 = nn.LayerNorm(d, eps=1e-5)
            self.ln2 = nn.LayerNorm(d, eps=1e-5)

    def forward(self, x):
        if self.norm == "pre":
            x = x + self.attn(self.ln1(x))
            return x + self.mlp(self.ln2(x))
        if self.norm == "post":
            x = self.ln1(x + self.attn(x))
            return self.ln2(x + self.mlp(x))
        x = x + self.attn(x)
        return x + self.mlp(x)


class Gpt(nn.Module):
    def __init__(self, vocab, block_size, d, n_layers, n_heads, norm, sigma_reparam, gen):
        super().__init__()
        layer = SigmaReparamLinear if sigma_reparam else Linear

        def make(i, o):
            return layer(i, o, gen)

        self.tok_emb = nn.Embedding(vocab, d)
        self.pos_emb = nn.Embedding(block_size, d)
        with torch.no_grad():
            self.tok_emb.weight.normal_(0.0, 1.0, generator=gen)
            self.pos_emb.weight.normal_(0.0, 1.0, generator=gen)
        self.blocks = nn.ModuleList(
            Block(d, n_heads, block_size, norm, make) for _ in range(n_layers)
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


def peak_rss_mib():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    raise RuntimeError("no VmHWM in /proc/self/status")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--variant", choices=sorted(VARIANTS), default="pre-ln")
    ap.add_argument("--steps", type=int, default=10, help="timed training steps")
    ap.add_argument("--warmup-steps", type=int, default=2, help="untimed steps first")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
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
    norm, sigma_reparam, lr = VARIANTS[a.variant]
    gen = torch.Generator().manual_seed(a.seed)
    model = Gpt(
        a.vocab, a.seq_len, a.d_model, a.n_layers, a.n_heads, norm, sigma_reparam, gen
    )
    model.train()
    decay, no_decay, gamma = [], [], []
    for name, p in model.named_parameters():
        if name.endswith(".gamma"):
            gamma.append(p)
        elif p.dim() >= 2:
            decay.append(p)
        else:
            no_decay.append(p)
    params = decay + no_decay + gamma
    opt = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": 0.01},
            {"params": no_decay, "weight_decay": 0.0},
            {"params": gamma, "weight_decay": 0.0},
        ],
        lr=lr,
        betas=(0.9, 0.999),
        eps=1e-8,
    )

    data_gen = torch.Generator().manual_seed(a.seed + 1)
    shape = (a.batch_size, a.seq_len)
    times, losses = [], []
    for step in range(a.warmup_steps + a.steps):
        ids = torch.randint(0, a.vocab, shape, generator=data_gen)
        targets = torch.randint(0, a.vocab, shape, generator=data_gen)
        t0 = time.perf_counter()
        loss = model.loss(ids, targets)
        losses.append(loss.item())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad()
        if step >= a.warmup_steps:
            times.append(time.perf_counter() - t0)

    median = statistics.median(times)
    print(
        json.dumps(
            {
                "impl": "pytorch",
                "version": torch.__version__,
                "variant": a.variant,
                "threads": a.threads,
                "steps": a.steps,
                "warmup_steps": a.warmup_steps,
                "batch_size": a.batch_size,
                "seq_len": a.seq_len,
                "d_model": a.d_model,
                "n_layers": a.n_layers,
                "n_heads": a.n_heads,
                "vocab": a.vocab,
                "parameters": sum(p.numel() for p in params),
                "median_ms": median * 1e3,
                "min_ms": min(times) * 1e3,
                "tokens_per_s": a.batch_size * a.seq_len / median,
                "peak_rss_mib": peak_rss_mib(),
                "first_loss": losses[0],
                "last_loss": losses[-1],
            }
        )
    )


if __name__ == "__main__":
    main()
