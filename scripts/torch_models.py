"""What the PyTorch (CPU, eager) twins of this engine's timing examples share.

scripts/torch_lm_step.py (the `lm` GPT) and scripts/torch_vit_step.py (the `classification`
ViT) import it: the linear layers (plain, or σReparam with the initialization of
nn/src/linear.rs), multi-head self-attention (causal or bidirectional), the GELU (tanh) MLP,
the transformer block with LayerNorm pre/post/none, the optimizer's parameter groups as
tasks/src/train/step.rs builds them, the timed training loop (forward, backward, clipping,
optimizer step, zero_grad) and the one JSON line both scripts print.
"""

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
# tasks/src/train/config.rs: TrainConfig::new's gradient clipping (global norm).
GRAD_CLIP = 1.0

# tasks/src/train/config.rs: Variant::layout, (LayerNorm placement, σReparam linears).
LAYOUTS = {
    "pre-ln": ("pre", False),
    "post-ln": ("post", False),
    "sigma-reparam": ("none", True),
    "sigma-reparam-pre-ln": ("pre", True),
    "sigma-reparam-post-ln": ("post", True),
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


def linear_maker(sigma_reparam, gen):
    """make(in, out): a plain or σReparam linear layer drawn from `gen`."""
    layer = SigmaReparamLinear if sigma_reparam else Linear

    def make(i, o):
        return layer(i, o, gen)

    return make


class SelfAttention(nn.Module):
    """Multi-head self-attention with separate q/k/v/proj linears, softmax(q kᵀ/√dh [+ mask]) v;
    `causal` adds the mask that hides later positions (sequences of at most `block_size`)."""

    def __init__(self, d, n_heads, make, causal=False, block_size=None):
        super().__init__()
        self.q, self.k, self.v, self.proj = (make(d, d) for _ in range(4))
        self.n_heads = n_heads
        self.causal = causal
        if causal:
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
        scores = q @ k.transpose(2, 3)
        if self.causal:
            scores = scores + self.mask[:t, :t]
        p = scores.softmax(dim=3)
        y = (p @ v).permute(0, 2, 1, 3).reshape(b, t, d)
        return self.proj(y)


class Mlp(nn.Module):
    """proj(GELU_tanh(fc(x))) with a hidden width of `ratio`·d."""

    def __init__(self, d, make, ratio=4):
        super().__init__()
        self.fc = make(d, ratio * d)
        self.proj = make(ratio * d, d)

    def forward(self, x):
        return self.proj(F.gelu(self.fc(x), approximate="tanh"))


class Block(nn.Module):
    """Attention then MLP, each residual, with LayerNorm `norm` = "pre", "post" or "none"."""

    def __init__(self, d, n_heads, norm, make, causal=False, block_size=None, mlp_ratio=4):
        super().__init__()
        self.attn = SelfAttention(d, n_heads, make, causal=causal, block_size=block_size)
        self.mlp = Mlp(d, make, mlp_ratio)
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


def param_groups(model):
    """tasks/src/train/step.rs build_optimizer's groups: (matrices, the other tensors, σReparam
    γs), each list in `named_parameters` order."""
    decay, no_decay, gamma = [], [], []
    for name, p in model.named_parameters():
        if name.endswith(".gamma"):
            gamma.append(p)
        elif p.dim() >= 2:
            decay.append(p)
        else:
            no_decay.append(p)
    return decay, no_decay, gamma


def build_optimizer(model, kind, lr, weight_decay=0.0, momentum=0.9):
    """`kind` "adamw" (betas 0.9, 0.999, eps 1e-8) or "sgd" (heavy-ball `momentum`, no
    dampening, not Nesterov) over param_groups(model), weight decay on the matrices only.
    Returns (all parameters: matrices, others, γs; the optimizer)."""
    decay, no_decay, gamma = param_groups(model)
    groups = [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
        {"params": gamma, "weight_decay": 0.0},
    ]
    if kind == "adamw":
        opt = torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.999), eps=1e-8)
    elif kind == "sgd":
        opt = torch.optim.SGD(groups, lr=lr, momentum=momentum, dampening=0.0, nesterov=False)
    else:
        raise ValueError(f"unknown optimizer {kind!r}")
    return decay + no_decay + gamma, opt


def add_common_args(ap, variants):
    """--variant (one of `variants`), --steps, --warmup-steps, --threads."""
    ap.add_argument("--variant", choices=sorted(variants), default="pre-ln")
    ap.add_argument("--steps", type=int, default=10, help="timed training steps")
    ap.add_argument("--warmup-steps", type=int, default=2, help="untimed steps first")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())


def peak_rss_mib():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    raise RuntimeError("no VmHWM in /proc/self/status")


def time_steps(next_batch, loss_of, params, opt, warmup_steps, steps):
    """warmup_steps + steps training steps; the batch `next_batch()` is drawn before the clock
    starts, then loss_of(*batch), backward, clipping at GRAD_CLIP, opt.step(), zero_grad().
    Returns (the timed steps' seconds, every step's loss)."""
    times, losses = [], []
    for step in range(warmup_steps + steps):
        batch = next_batch()
        t0 = time.perf_counter()
        loss = loss_of(*batch)
        losses.append(loss.item())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, GRAD_CLIP)
        opt.step()
        opt.zero_grad()
        if step >= warmup_steps:
            times.append(time.perf_counter() - t0)
    return times, losses


def print_result(a, model_fields, params, times, losses, rate_key, items_per_step):
    """The one JSON line: run settings, then `model_fields` (a dict, in its order), the
    parameter count, median and min ms per step, `rate_key` = items_per_step / median
    second, peak RSS (MiB) and the first and last losses."""
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
                **model_fields,
                "parameters": sum(p.numel() for p in params),
                "median_ms": median * 1e3,
                "min_ms": min(times) * 1e3,
                rate_key: items_per_step / median,
                "peak_rss_mib": peak_rss_mib(),
                "first_loss": losses[0],
                "last_loss": losses[-1],
            }
        )
    )


__all__ = [
    "GRAD_CLIP",
    "LAYOUTS",
    "Block",
    "Linear",
    "Mlp",
    "SelfAttention",
    "SigmaReparamLinear",
    "add_common_args",
    "build_optimizer",
    "linear_maker",
    "param_groups",
    "peak_rss_mib",
    "print_result",
    "time_steps",
]
