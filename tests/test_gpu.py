"""The CUDA paths: grouped training and batched sharpness on the GPU equal the one-at-a-time runs, the sharpness
agrees with PyHessian and with the CPU, and a compiled model runs under ``torch.compile``. Skipped without CUDA
(``-m gpu`` runs them on a machine that has it)."""

import pytest
import torch
from torch import nn

from mupdsl.compile import compile_model
from mupdsl.measure.hvp import Batch
from mupdsl.measure.sharpness import measure, measure_compiled

pytestmark = pytest.mark.gpu

CUDA = torch.device("cuda")

TINY = """
name = "tiny-gpu"
specs = ["mup"]
model = "mupdsl.models.mlp"
dataset = "teacher"
widths = [64, 256]
lrs = [0.001, 0.01, 0.05]
seeds = [0, 1]
optimizer = "adam"
steps = 20
batch_size = 16
num_samples = 400
device = "cuda"
[measure]
sharpness_every = 5
eval_every = 5
batch_size = 64
trace_samples = 4
directional = true
"""


def test_grouped_equals_one_at_a_time_on_cuda(tmp_path):
    import numpy as np

    from mupdsl.sweep import load_experiment, plan_trials
    from mupdsl.sweep.trial import experiment_data, train_alone, train_group

    torch.backends.cuda.matmul.allow_tf32 = False
    path = tmp_path / "exp.toml"
    path.write_text(TINY)
    exp = load_experiment(path)
    data = experiment_data(exp)
    group = [t for t in plan_trials(exp) if t["width"] == 256]
    for trial, (status, curves, _, _) in zip(group, train_group(exp, group, data, CUDA)):
        s, c, _, _ = train_alone(exp, trial, data, CUDA)
        assert status == s == "done"
        # cuBLAS picks different kernels for the batched and the single products: float32 rounding, not 1e-5
        np.testing.assert_allclose(curves["loss"], c["loss"], rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(curves["sharpness"], c["sharpness"], rtol=1e-2)
        np.testing.assert_allclose(curves["directional"], c["directional"], rtol=1e-2)


def test_sharpness_on_cuda_equals_cpu_and_pyhessian():
    from pyhessian import hessian as PyHessian

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10)).double()
    x, y = torch.randn(32, 3, 8, 8, dtype=torch.float64), torch.randint(0, 10, (32,))
    on_cpu = measure(model, Batch((x,), y), tol=1e-8).sharpness
    model.cuda()
    on_gpu = measure(model, Batch((x.cuda(),), y.cuda()), tol=1e-8).sharpness
    assert on_gpu == pytest.approx(on_cpu, rel=1e-8)
    torch.manual_seed(1)
    theirs = PyHessian(model, nn.CrossEntropyLoss(), data=(x.cuda(), y.cuda()), cuda=True).eigenvalues(
        maxIter=200, tol=1e-6)[0][0]
    assert on_gpu == pytest.approx(theirs, rel=1e-3)


def test_compiled_model_trains_on_cuda_and_under_torch_compile():
    compiled = compile_model("mup", "mupdsl.models.mlp", width=256, base_width=64, optimizer="adam", seed=0)
    model = compiled.model.to(CUDA)
    x, y = torch.randn(64, 40, device=CUDA), torch.randint(0, 10, (64,), device=CUDA)
    fast = torch.compile(model)
    with torch.no_grad():
        torch.testing.assert_close(fast(x), model(x), rtol=1e-4, atol=1e-5)
    opt = compiled.optimizer()
    losses = []
    for _ in range(10):
        loss = nn.functional.cross_entropy(fast(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    r = measure_compiled(compiled, Batch((x,), y), optimizer=opt, tol=1e-4)
    assert r.converged and r.sharpness > 0


def test_coordcheck_on_cuda_gives_the_cpu_verdicts_and_batched_seeds_the_records_of_seeds_one_by_one():
    """On the GPU the verdicts are the CPU's (the CUDA generator draws other numbers, so records are compared
    between the GPU's two paths: vmapped seeds against seeds one by one)."""
    from mupdsl.measure import coordcheck

    kw = dict(widths=(64, 128, 256), seeds=2, steps=3, batch_size=16)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    key = ("width", "seed", "step", "key")
    for model, spec, verdict in [("mupdsl.models.mlp", "mup", "PASS"), ("mupdsl.models.mlp", "sp", "FAIL"),
                                 ("mupdsl.models.mlp", "ntp", "FAIL"), ("mupdsl.models.gpt", "mup", "PASS")]:
        alone = coordcheck(spec, model, device="cuda", batched_seeds=False, **kw)
        together = coordcheck(spec, model, device="cuda", batched_seeds=True, **kw)
        cpu = coordcheck(spec, model, **kw)
        assert alone.verdict == together.verdict == cpu.verdict == verdict, (model, spec)
        by_key = {tuple(r[k] for k in key): r for r in alone.records}
        assert len(by_key) == len(together.records)
        for r in together.records:
            a = by_key[tuple(r[k] for k in key)]
            for stat in set(a) & {"rms", "abs_mean", "delta_rms", "delta_abs"}:
                assert r[stat] == pytest.approx(a[stat], rel=1e-3, abs=1e-6), (model, spec, r["key"], stat)
