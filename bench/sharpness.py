"""Sharpness benchmark: HVPs and wall time to a true relative error of 1e-3 for PyHessian's power
iteration and for mupdsl's Lanczos, cold and warm-started along a training run, on a residual ConvNet and an MLP.

The reference top eigenvalue is scipy.sparse.linalg.eigsh (tol 1e-8) on the same HVP operator. "HVPs to 1e-3" is
the number of operator applications after which the method's current estimate is within 1e-3 of the reference
(an oracle stop, the same for both methods); "own stop" is what each method spends with its own stopping rule
(PyHessian: tol 1e-3 between consecutive estimates, maxIter 100; mupdsl: residual ≤ 1e-3·|θ|) and the true error
it then has.

    .venv/bin/python bench/sharpness.py [--steps 50] [--every 5] [--device cpu]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from scipy.sparse.linalg import LinearOperator, eigsh
from torch.nn import functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mupdsl.compile import compile_model  # noqa: E402
from mupdsl.measure.hvp import Batch, HessianOperator  # noqa: E402
from mupdsl.measure.lanczos import lanczos  # noqa: E402


def reference(op: HessianOperator) -> float:
    lin = LinearOperator((op.dim, op.dim), matvec=lambda v: op.hvp(torch.as_tensor(v, dtype=op.dtype)).double().numpy(),
                         dtype=np.float64)
    return float(eigsh(lin, k=1, which="LA", tol=1e-8, return_eigenvectors=False)[0])


def power_iteration(op, dim, ref, tol=1e-3, max_iter=100, seed=0):
    """PyHessian's loop (eigenvalue = vᵀHv with v normalised, stop when consecutive estimates agree to tol)."""
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(dim, generator=g)
    v /= v.norm()
    first_hit, estimate = None, None
    for i in range(1, max_iter + 1):
        hv = op(v)
        new = float(torch.dot(hv, v))
        if first_hit is None and abs(new - ref) / abs(ref) < 1e-3:
            first_hit = i
        v = hv / hv.norm()
        if estimate is not None and abs(estimate - new) / (abs(estimate) + 1e-6) < tol:
            return first_hit, i, abs(new - ref) / abs(ref)
        estimate = new
    return first_hit, max_iter, abs(estimate - ref) / abs(ref)


def lanczos_oracle(op, dim, ref, start=None, seed=0):
    """Smallest iteration count whose top Ritz value is within 1e-3 of the reference."""
    for m in range(1, 200):
        eig = lanczos(op, dim, 1, tol=0.0, max_iter=m, start=start, seed=seed)
        if abs(eig.top - ref) / abs(ref) < 1e-3:
            return m
    return None


def run(model_name: str, steps: int, every: int) -> dict:
    torch.manual_seed(0)
    compiled = compile_model("mup", model_name, width=64, base_width=32, optimizer="sgd", overrides={"eta0": 0.1})
    from mupdsl.compile.factory import load_factory

    x, y = load_factory(model_name).example_batch(128)
    batch = Batch((x,), y)
    opt = compiled.optimizer()
    rows, previous = [], None
    for step in range(steps + 1):
        if step % every == 0:
            op = HessianOperator(compiled.model, batch)
            ref = reference(op)
            count = HessianOperator(compiled.model, batch)
            t = time.perf_counter()
            ph_hit, ph_own, ph_err = power_iteration(count.hvp, count.dim, ref)
            ph_time = time.perf_counter() - t
            cold_hit = lanczos_oracle(HessianOperator(compiled.model, batch).hvp, op.dim, ref)
            warm_hit = lanczos_oracle(HessianOperator(compiled.model, batch).hvp, op.dim, ref, start=previous)
            t = time.perf_counter()
            own = lanczos(HessianOperator(compiled.model, batch).hvp, op.dim, 1, tol=1e-3, start=previous)
            lz_time = time.perf_counter() - t
            rows.append(dict(step=step, ref=ref, ph_hit=ph_hit, ph_own=ph_own, ph_err=ph_err, ph_time=ph_time,
                             cold_hit=cold_hit, warm_hit=warm_hit, own=own.hvps, own_err=abs(own.top - ref) / abs(ref),
                             own_time=lz_time, warm=previous is not None))
            previous = own.vectors
        opt.zero_grad()
        F.cross_entropy(compiled(x), y).backward()
        opt.step()
    return {"model": model_name, "rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--every", type=int, default=5)
    args = parser.parse_args()
    print("| model | PyHessian power iteration: HVPs to 1e-3 (median) / own stop: HVPs, true error (median, max) | "
          "Lanczos cold: HVPs to 1e-3 | Lanczos warm: HVPs to 1e-3 | Lanczos own stop (warm): HVPs, true error (max) |"
          " wall per measurement: power / Lanczos |")
    print("|---|---|---|---|---|---|")
    for name in ("mupdsl.models.resconv", "mupdsl.models.mlp"):
        res = run(name, args.steps, args.every)
        r = res["rows"]
        ph_hits = [x["ph_hit"] or 10**6 for x in r]   # never reached within 100 iterations: counted as > 100
        warm = [x for x in r if x["warm"]]
        print(f"| {name.rsplit('.', 1)[-1]} (µP, width 64, SGD, batch 128, {len(r)} measurements over {args.steps} steps) | "
              f"{'>100' if statistics.median(ph_hits) > 100 else statistics.median(ph_hits)} "
              f"({sum(h <= 100 for h in ph_hits)}/{len(r)} reached) / {statistics.median(x['ph_own'] for x in r)}, "
              f"{statistics.median(x['ph_err'] for x in r):.1e}, {max(x['ph_err'] for x in r):.1e} | "
              f"{statistics.median(x['cold_hit'] for x in r)} | "
              f"{statistics.median(x['warm_hit'] for x in warm)} | "
              f"{statistics.median(x['own'] for x in warm)}, {max(x['own_err'] for x in warm):.1e} | "
              f"{statistics.median(x['ph_time'] for x in r):.3f} s / {statistics.median(x['own_time'] for x in warm):.3f} s |")


if __name__ == "__main__":
    main()
