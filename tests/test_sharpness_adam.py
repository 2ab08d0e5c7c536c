"""Adam's preconditioned sharpness D P⁻¹ H: the variants against a dense float64 reference, and the ε-floor share
on a constructed case whose answer is known."""

import pytest
import torch
from torch import nn
from torch.func import functional_call
from torch.nn import functional as F

from mupdsl.measure.hvp import Batch, HessianOperator
from mupdsl.measure.sharpness import (
    AdamMoments, adam_moments, adam_preconditioner, at_floor, floor_share, floor_warning, measure,
)

pytestmark = pytest.mark.usefixtures("float64")


def trained_mlp(steps=3):
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    model = nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3))
    x, y = torch.randn(24, 5, generator=g), torch.randint(0, 3, (24,), generator=g)
    names = [n for n, _ in model.named_parameters()]
    lrs = {n: 0.01 * (i + 1) for i, n in enumerate(names)}
    opt = torch.optim.Adam([{"params": [model.get_parameter(n)], "lr": lrs[n]} for n in names], eps=1e-8)
    for _ in range(steps):
        opt.zero_grad()
        F.cross_entropy(model(x[:8]), y[:8]).backward()   # trains on the first 8, measured on all 24
        opt.step()
    return model, names, lrs, opt, Batch((x,), y)


def dense_hessian(model, batch):
    op = HessianOperator(model, batch)
    flat = op.flatten(op.params).clone()
    H = torch.autograd.functional.hessian(
        lambda v: F.cross_entropy(functional_call(model, op.unflatten(v), batch.inputs), batch.targets), flat)
    g = torch.autograd.functional.jacobian(
        lambda v: F.cross_entropy(functional_call(model, op.unflatten(v), batch.inputs), batch.targets), flat)
    return H, g


@pytest.mark.parametrize("variant", ["last", "next"])
def test_adam_variants_against_dense(variant):
    model, names, lrs, opt, batch = trained_mlp()
    eta0, t = 0.01, 3
    H, g = dense_hessian(model, batch)
    v = torch.cat([opt.state[model.get_parameter(n)]["exp_avg_sq"].reshape(-1) for n in names])
    ratio = torch.cat([torch.full((model.get_parameter(n).numel(),), lrs[n] / eta0) for n in names])
    if variant == "last":
        v_hat, tt = v / (1 - 0.999 ** t), t
    else:  # the next update's: v ← β2 v + (1 − β2) g², bias-corrected at t + 1
        v_hat, tt = (0.999 * v + 0.001 * g ** 2) / (1 - 0.999 ** (t + 1)), t + 1
    DPinv = ratio / ((1 - 0.9 ** tt) * (v_hat.sqrt() + 1e-8))
    exact = torch.linalg.eigvals(torch.diag(DPinv) @ H).real.max()
    moments = adam_moments(model, names, opt)
    assert moments.step == t and moments.beta1 == 0.9
    result = measure(model, batch, names=names, adam=moments, ratio=ratio, preconditioner=variant, tol=1e-10)
    assert result.sharpness == pytest.approx(float(exact), rel=1e-7)
    assert result.floor_share is not None
    S, floor = adam_preconditioner(model, names, lrs, eta0, opt, "adam", variant,
                                   g if variant == "next" else None)
    assert torch.allclose(S.square(), DPinv, rtol=1e-12)
    assert torch.equal(floor, v_hat <= 1e-16)


def test_floor_share_on_a_constructed_case():
    """A ReLU unit that is dead on every training input but alive on the measurement batch: its incoming and
    outgoing weights never get a gradient (v = 0, preconditioner lr/ε) but have curvature on the measured batch."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 2))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]]))
        model[0].bias.copy_(torch.tensor([0.5, 0.5, -1.0]))   # unit 2: pre-activation -1 + x·0 — dead ...
        model[0].weight[2] = torch.tensor([5.0, 0.0])           # ... unless x₀ > 0.2
    train = Batch((torch.tensor([[-1.0, 0.3], [-2.0, -0.2], [0.1, 0.4]]),), torch.tensor([0, 1, 0]))
    measured = Batch((torch.tensor([[1.0, 0.3], [2.0, -0.2]]),), torch.tensor([1, 0]))
    names = [n for n, _ in model.named_parameters()]
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(2):
        opt.zero_grad()
        F.cross_entropy(model(*train.inputs), train.targets).backward()
        opt.step()
    moments = adam_moments(model, names, opt)
    ratio = torch.ones_like(moments.v)
    _, floor = moments.scale(ratio)
    # the dead unit's row of the first weight (2 entries), its bias and its readout column (2 entries)
    expected = torch.zeros(sum(p.numel() for p in model.parameters()), dtype=torch.bool)
    expected[[4, 5, 8, 11, 14]] = True   # W0[2, :] (4, 5), b0[2] (8), W1[:, 2] (11, 14)
    assert torch.equal(floor, expected)
    last = measure(model, measured, names=names, adam=moments, ratio=ratio, preconditioner="last", tol=1e-10)
    assert last.floor_share > 0.999 and "ε floor" in last.warning and "100%" in last.warning
    # dense check of the share: the top eigenvector of S H S computed densely
    H, g = dense_hessian(model, measured)
    S, _ = moments.scale(ratio)
    w, V = torch.linalg.eigh(S[:, None] * H * S[None, :])
    top = V[:, -1]
    assert last.sharpness == pytest.approx(float(w[-1]), rel=1e-8)
    assert last.floor_share == pytest.approx(float(top[expected].square().sum()), abs=1e-9)
    # the next update's preconditioner sees the measured gradient there: off the floor, no warning
    nxt = measure(model, measured, names=names, adam=moments, ratio=ratio, preconditioner="next", tol=1e-10)
    assert nxt.floor_share < 0.01 and nxt.warning is None
    assert nxt.sharpness < 1e-4 * last.sharpness


def test_pure_floor_functions():
    v = torch.tensor([0.0, 1e-17, 1e-16, 2e-16, 1.0])
    assert at_floor(v, 1e-8).tolist() == [True, True, True, False, False]
    y = torch.tensor([3.0, 0.0, 0.0, 0.0, 4.0])
    assert floor_share(y, at_floor(v, 1e-8)) == pytest.approx(9 / 25)
    assert floor_warning(0.2) is None and "36%" in floor_warning(0.36)
    m = AdamMoments(torch.tensor([0.0, 4.0]), 1e-8, 0.9, 0.999, 1)
    S, floor = m.scale(torch.tensor([1.0, 1.0]))
    assert S.square().tolist() == pytest.approx([1 / (0.1 * 1e-8), 1 / (0.1 * (2 / 0.001 ** 0.5 + 1e-8))])
    assert floor.tolist() == [True, False]
