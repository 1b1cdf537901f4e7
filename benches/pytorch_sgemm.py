"""PyTorch CPU sgemm reference for `benches/engine.rs` (run side by side, alternating).

Usage: OMP_NUM_THREADS=T python3 benches/pytorch_sgemm.py T
Prints the median per-call time of torch.mm on random f32 [n,n] matrices and the matching
GFLOP/s (2·n³ per product), for n = 256, 512, 1024. A per-call median is robust to the other
work on a shared machine; compare it with a per-call median of the engine, not with a mean.
"""
import sys
import time

import torch

threads = int(sys.argv[1]) if len(sys.argv) > 1 else 1
torch.set_num_threads(threads)


def median_time(f, min_time=3.0):
    f()
    f()
    ts = []
    end = time.perf_counter() + min_time
    while time.perf_counter() < end or len(ts) < 5:
        t0 = time.perf_counter()
        f()
        ts.append(time.perf_counter() - t0)
    ts.sort()
    return ts[len(ts) // 2]


torch.manual_seed(0)
for n in (256, 512, 1024):
    a, b = torch.randn(n, n), torch.randn(n, n)
    t = median_time(lambda: torch.mm(a, b))
    print(f"torch T={threads} sgemm/{n}: {2 * n**3 / t / 1e9:.1f} GFLOP/s (median {t * 1e3:.2f} ms)")
