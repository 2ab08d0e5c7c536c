"""Sharpness, spectra and trace against a dense float64 Hessian, the seed 002 Sec. 5 bound, and PyHessian."""

import math

import pytest
import torch
from torch import nn
from torch.func import functional_call
from torch.nn import functional as F

from mupdsl.measure.hvp import Batch, HessianOperator, math_attention
from mupdsl.measure.lanczos import lanczos
from mupdsl.measure.ntk import jacobian, ntk_eigenvalues
from mupdsl.measure.sharpness import PreconditionedOperator, eos_threshold, measure, preconditioner


pytestmark = pytest.mark.usefixtures("float64")


class TinyAttention(nn.Module):
    def __init__(self, d=6, classes=3):
        super().__init__()
        self.inp = nn.Linear(4, d)
        self.qkv = nn.Linear(d, 3 * d)
        self.out = nn.Linear(d, classes)

    def forward(self, x):            # x: (B, T, 4)
        h = self.inp(x)
        q, k, v = self.qkv(h).chunk(3, dim=-1)
        y = F.scaled_dot_product_attention(q.unsqueeze(1), k.unsqueeze(1), v.unsqueeze(1)).squeeze(1)
        return self.out((h + y).mean(dim=1))


def tiny(kind):
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    if kind == "mlp":
        m = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 3))
        x = torch.randn(12, 5, generator=g)
    elif kind == "conv":
        m = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.Tanh(), nn.AvgPool2d(2), nn.Flatten(), nn.Linear(12, 3))
        x = torch.randn(10, 2, 4, 4, generator=g)
    else:
        m = TinyAttention()
        x = torch.randn(9, 5, 4, generator=g)
    return m, Batch((x,), torch.randint(0, 3, (x.shape[0],), generator=g))


def dense(model, batch, loss="ce"):
    op = HessianOperator(model, batch, loss)
    flat = op.flatten(op.params).clone()

    def f(v):
        out = functional_call(model, op.unflatten(v), batch.inputs)
        return F.cross_entropy(out, batch.targets) if loss == "ce" else F.mse_loss(out, batch.targets)

    with math_attention():
        return op, flat, f, torch.autograd.functional.hessian(f, flat)


@pytest.mark.parametrize("kind", ["mlp", "conv", "attention"])
def test_top_k_against_dense(kind):
    model, batch = tiny(kind)
    op, _, _, H = dense(model, batch)
    exact = torch.linalg.eigvalsh(H).flip(0)[:3]
    result = measure(model, batch, top_k=3, tol=1e-8)
    assert result.converged
    assert torch.allclose(torch.tensor(result.eigenvalues), exact, rtol=1e-6, atol=1e-9)
    assert result.hvps <= op.dim


@pytest.mark.parametrize("kind", ["mlp", "attention"])
def test_preconditioned_sgd_and_adam_forms(kind):
    model, batch = tiny(kind)
    op, _, _, H = dense(model, batch)
    names = op.names
    lrs = {n: (0.3 if "weight" in n else 0.05) * (i + 1) for i, n in enumerate(names)}
    eta0 = 0.1
    # SGD: S = sqrt(lr/eta0); eig(S H S) = eig(D H), D = diag(lr/eta0)
    S = preconditioner(model, names, lrs, eta0)
    D = torch.cat([torch.full((model.get_parameter(n).numel(),), lrs[n] / eta0) for n in names])
    exact = torch.linalg.eigvals(torch.diag(D) @ H).real.sort(descending=True).values[:2]
    got = measure(model, batch, scale=S, top_k=2, tol=1e-9).eigenvalues
    assert torch.allclose(torch.tensor(got), exact, rtol=1e-6)
    # Adam: S² = lr / ((sqrt(v̂) + eps) eta0) from the optimizer's state after two steps
    opt = torch.optim.Adam([{"params": [model.get_parameter(n)], "lr": lrs[n]} for n in names], eps=1e-8)
    for _ in range(2):
        opt.zero_grad()
        F.cross_entropy(model(*batch.inputs), batch.targets).backward()
        opt.step()
    op, _, _, H = dense(model, batch)
    S = preconditioner(model, names, lrs, eta0, opt, "adam")
    P = []
    for n in names:  # D P⁻¹ with P = (1 − β1^t)(√v̂ + ε) (seed 002 App. J.1; Cohen et al. 2022)
        st = opt.state[model.get_parameter(n)]
        v_hat = st["exp_avg_sq"] / (1 - 0.999 ** float(st["step"]))
        P.append((lrs[n] / eta0 / ((1 - 0.9 ** float(st["step"])) * (v_hat.sqrt() + 1e-8))).reshape(-1))
    DP = torch.diag(torch.cat(P))
    exact = torch.linalg.eigvals(DP @ H).real.sort(descending=True).values[:2]
    got = measure(model, batch, scale=S, top_k=2, tol=1e-9).eigenvalues
    assert torch.allclose(torch.tensor(got), exact, rtol=1e-6)
    assert eos_threshold("adam", eta0) == pytest.approx(2 * 1.9 / (0.1 * eta0))
    # no edge of stability where the tool defines no preconditioned sharpness (it used to fall through to Adam's)
    assert [eos_threshold(kind, eta0) for kind in ("signsgd", "lion", "muon")] == [None, None, None]
    assert eos_threshold("adafactor", eta0) == pytest.approx(2 / eta0)


@pytest.mark.parametrize("kind", ["mlp", "conv"])
def test_trace_and_directional(kind):
    model, batch = tiny(kind)
    op, flat, f, H = dense(model, batch)
    r = measure(model, batch, trace_samples=400, directional=True)
    assert abs(r.trace - float(H.trace())) <= 4 * r.trace_stderr
    g = torch.autograd.functional.jacobian(f, flat)
    assert r.directional == pytest.approx(float(g @ H @ g / (g @ g)), rel=1e-8)


@pytest.mark.parametrize("loss", ["ce", "mse"])
def test_gauss_newton_plus_residual_is_the_hessian(loss):
    model, batch = tiny("mlp")
    if loss == "mse":
        batch = Batch(batch.inputs, torch.randn(batch.targets.shape[0], 3))
    op, flat, f, H = dense(model, batch, loss)
    J = jacobian(model, batch, op.names)           # (n·C) × P
    out = model(*batch.inputs).detach()
    if loss == "ce":
        HL = torch.autograd.functional.hessian(lambda o: F.cross_entropy(o.view_as(out), batch.targets),
                                               out.reshape(-1))
    else:
        HL = torch.autograd.functional.hessian(lambda o: F.mse_loss(o.view_as(out), batch.targets), out.reshape(-1))
    G = J.T @ HL @ J
    pre = PreconditionedOperator(op, None)
    basis = torch.eye(op.dim)
    G_op = torch.stack([pre.gauss_newton(e) for e in basis], dim=1)
    R_op = torch.stack([pre.residual(e) for e in basis], dim=1)
    assert torch.allclose(G_op, G, atol=1e-10)
    assert torch.allclose(G_op + R_op, H, atol=1e-10)
    r = measure(model, batch, loss=loss, split=True, tol=1e-9)
    assert r.gauss_newton == pytest.approx(float(torch.linalg.eigvalsh(G)[-1]), rel=1e-6)
    assert r.residual_part == pytest.approx(float(torch.linalg.eigvalsh(H - G)[-1]), rel=1e-5, abs=1e-9)


def test_ntk_against_explicit_jacobian():
    model, batch = tiny("mlp")
    names = [n for n, _ in model.named_parameters()]
    rows = []
    for i in range(batch.targets.shape[0]):
        for c in range(3):
            model.zero_grad()
            model(batch.inputs[0][i:i + 1])[0, c].backward()
            rows.append(torch.cat([p.grad.reshape(-1) for p in model.parameters()]))
    J = torch.stack(rows)
    scale = torch.linspace(0.5, 2.0, J.shape[1])
    K = J * scale
    exact = torch.linalg.eigvalsh(K @ K.T / batch.targets.shape[0]).flip(0)[:3]
    got = ntk_eigenvalues(model, batch, names, scale, k=3)
    assert torch.allclose(torch.tensor(got), exact, rtol=1e-8)


class TwoLayerLinear(nn.Module):
    """Seed 002 Sec. 5: f(X) = X E V / (γ sqrt(N D)), E ~ N(0,1)^{D×N}, V ~ N(0,1)^{N×1}."""

    def __init__(self, D, N, gamma, seed):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.E = nn.Parameter(torch.randn(D, N, generator=g))
        self.V = nn.Parameter(torch.randn(N, 1, generator=g))
        self.c = 1.0 / (gamma * math.sqrt(N * D))

    def forward(self, X):
        return (X @ self.E @ self.V * self.c).squeeze(-1)


@pytest.mark.parametrize("param", ["mup", "ntp"])
@pytest.mark.parametrize("N", [16, 64])
def test_lemma_5_2_bound_along_gd(param, N):
    D, eta0 = 6, 0.3
    gamma = math.sqrt(N) if param == "mup" else 1.0
    model = TwoLayerLinear(D, N, gamma, seed=N)
    g = torch.Generator().manual_seed(7)
    w_star = torch.randn(D, generator=g)
    X = torch.eye(D)
    batch = Batch((X,), X @ w_star)

    def half_sum(out, y):      # L = ½ ||f(X) − Y||²
        return 0.5 * ((out - y) ** 2).sum()

    names = ["E", "V"]
    opt = torch.optim.SGD(model.parameters(), lr=eta0 * gamma ** 2)
    scale = torch.full((D * N + N,), gamma)           # S² = lr/eta0 = γ²: the operator is γ² H
    checked = 0
    for step in range(40):
        r = measure(model, batch, loss=half_sum, names=names, scale=scale, tol=1e-10)
        theta = ntk_eigenvalues(model, batch, names, scale, k=1, normalize=False)[0]
        with torch.no_grad():
            w = (model.E @ model.V).squeeze(-1) * model.c
        bound = math.sqrt(gamma ** 2 / (N * D)) * float((w - w_star).norm())
        assert abs(r.sharpness - theta) <= bound + 1e-9, (step, r.sharpness, theta, bound)
        checked += 1
        opt.zero_grad()
        half_sum(model(X), batch.targets).backward()
        opt.step()
    assert checked == 40


def test_measurement_leaves_the_model_unchanged():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Dropout(0.2), nn.Linear(6, 2))
    model.train()
    x, y = torch.randn(8, 4), torch.randint(0, 2, (8,))
    F.cross_entropy(model(x), y).backward()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    grads = [p.grad.clone() for p in model.parameters()]
    rng = torch.get_rng_state()
    for mode in ("eval", "train"):
        measure(model, Batch((x,), y), mode=mode, trace_samples=3, directional=True, split=True)
    assert model.training and all(m.training for m in model.modules())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(torch.equal(g, p.grad) for g, p in zip(grads, model.parameters()))
    assert torch.equal(rng, torch.get_rng_state())
    # train-mode BatchNorm is a different operator: the explicit mode matters
    a = measure(model, Batch((x,), y), mode="eval", tol=1e-9).sharpness
    model.eval()  # dropout off, BN in eval for the train-mode measurement comparison below is irrelevant
    b = measure(nn.Sequential(*list(model)[:3], list(model)[4]), Batch((x,), y), mode="train", tol=1e-9).sharpness
    assert a != pytest.approx(b, rel=1e-3)


def test_warm_start_needs_fewer_hvps():
    model, batch = tiny("mlp")
    cold = measure(model, batch, tol=1e-6)
    warm = measure(model, batch, tol=1e-6, start=cold.vectors)
    assert warm.hvps < cold.hvps and warm.sharpness == pytest.approx(cold.sharpness, rel=1e-5)


def test_lanczos_finds_the_largest_algebraic_of_an_indefinite_operator():
    torch.manual_seed(3)
    Q, _ = torch.linalg.qr(torch.randn(40, 40))
    spectrum = torch.cat([torch.tensor([-10.0, 3.0, 2.5]), torch.linspace(-2, 2, 37)])
    A = Q @ torch.diag(spectrum) @ Q.T
    eig = lanczos(lambda v: A @ v, 40, k=2, tol=1e-10, dtype=torch.float64)
    assert eig.values == pytest.approx([3.0, 2.5], rel=1e-8)   # not the -10 power iteration would find


pyhessian = pytest.importorskip("pyhessian")


def test_agrees_with_pyhessian_on_a_small_convnet():
    from pyhessian import hessian as PyHessian
    torch.set_default_dtype(torch.float32)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))
    x, y = torch.randn(32, 3, 8, 8), torch.randint(0, 10, (32,))
    ours = measure(model, Batch((x,), y), tol=1e-6).sharpness
    torch.manual_seed(1)
    theirs = PyHessian(model, nn.CrossEntropyLoss(), data=(x, y), cuda=False).eigenvalues(maxIter=200, tol=1e-6)[0][0]
    assert ours == pytest.approx(theirs, rel=1e-3)   # PyHessian's own tolerance, tightened


SMALL_MODEL = '''
import torch
from torch import nn

def build(width: int, depth: int = 1):
    return nn.Sequential(nn.Linear(6, width), nn.Tanh(), nn.Linear(width, width), nn.Tanh(), nn.Linear(width, 4))

def example_batch(batch_size: int):
    g = torch.Generator().manual_seed(5)
    return torch.randn(batch_size, 6, generator=g), torch.randint(0, 4, (batch_size,), generator=g)
'''


@pytest.mark.parametrize("spec,opt", [("mup", "sgd"), ("mup", "adam"), ("sp", "sgd")])
def test_cli_against_dense_hessian_of_saved_state(tmp_path, spec, opt):
    import json

    from click.testing import CliRunner

    from mupdsl.cli import main
    from mupdsl.compile import compile_model

    torch.set_default_dtype(torch.float32)
    path = tmp_path / "small.py"
    path.write_text(SMALL_MODEL)
    state = tmp_path / "state.pt"
    eta0 = "0.05" if opt == "sgd" else "0.001"
    args = ["sharpness", spec, str(path), "--width", "12", "--base-width", "6", "-o", opt, "--set", f"eta0={eta0}",
            "--batch-size", "16", "--train-steps", "3", "--top-k", "3", "--json", "--save-state", str(state)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert set(doc) >= {"sharpness", "eigenvalues", "eos_threshold", "hvps", "residual", "converged", "trace",
                        "directional"}
    assert doc["converged"] and doc["hvps"] > 0
    compiled = compile_model(spec, str(path), width=12, base_width=6, optimizer=opt, overrides={"eta0": eta0})
    compiled.model.load_state_dict(torch.load(state))
    model = compiled.model.double()
    x, y = __import__("importlib").import_module("runpy").run_path(str(path))["example_batch"](16)
    batch = Batch((x.double(),), y)
    op, flat, f, H = dense(model, batch)
    exact = torch.linalg.eigvalsh(H).flip(0)[:3]
    assert torch.allclose(torch.tensor(doc["unpreconditioned"]["eigenvalues"], dtype=torch.float64), exact, rtol=1e-3)
    if opt == "sgd":  # S² = lr_p / eta0 from the saved plan, with the learning rates the stored weights train with
        plan = json.loads((tmp_path / "state.pt.plan.json").read_text())
        lr = {t["name"]: t["carried"]["lr"] for t in plan["tensors"]}
        d = torch.cat([torch.full((model.get_parameter(n).numel(),), lr[n] / float(eta0)) for n in op.names])
        S = d.sqrt()
        pre = torch.linalg.eigvalsh(S[:, None] * H * S[None, :]).flip(0)[:3]
        assert torch.allclose(torch.tensor(doc["eigenvalues"], dtype=torch.float64), pre, rtol=1e-3)
        assert doc["eos_threshold"] == pytest.approx(2 / float(eta0))
        # the same in the spec's own weights w = W / fold (H_w = F H_W F) with the spec's learning rates: the
        # preconditioned Hessian does not depend on where a multiplier is carried (TP5 Lemma J.1)
        fold = torch.cat([torch.full((model.get_parameter(n).numel(),), t["carried"]["fold"], dtype=torch.float64)
                          for n in op.names for t in plan["tensors"] if t["name"] == n])
        spec_lr = {t["name"]: t["lr"] for t in plan["tensors"]}
        S_w = torch.cat([torch.full((model.get_parameter(n).numel(),), spec_lr[n] / float(eta0)) for n in op.names]).sqrt()
        H_w = fold[:, None] * H * fold[None, :]
        spec_pre = torch.linalg.eigvalsh(S_w[:, None] * H_w * S_w[None, :]).flip(0)[:3]
        assert torch.allclose(spec_pre, pre, rtol=1e-9)
        assert (fold != 1).any() == (spec == "mup")   # the readout's 1/m is folded in µP


def test_batched_lanczos_equals_one_at_a_time():
    """Members with different spectra (and one that converges much later) get the answers and HVP counts they
    get alone, and the eigenvalues of the dense matrices."""
    from mupdsl.measure.lanczos import lanczos_batched

    g = torch.Generator().manual_seed(0)
    mats = []
    for gap in (0.5, 0.05, 0.005):
        Q, _ = torch.linalg.qr(torch.randn(40, 40, generator=g))
        spectrum = torch.cat([torch.tensor([3.0, 3.0 - gap]), torch.linspace(-1, 2, 38)])
        mats.append(Q @ torch.diag(spectrum) @ Q.T)
    A = torch.stack(mats)
    batched = lanczos_batched(lambda V, members: torch.einsum("bij,bj->bi", A[members], V), 3, 40, 2, tol=1e-9,
                              dtype=torch.float64)
    for M, got in zip(mats, batched):
        alone = lanczos(lambda v: M @ v, 40, 2, tol=1e-9, dtype=torch.float64)
        assert got.hvps == alone.hvps and got.converged
        assert got.values == pytest.approx(alone.values, rel=1e-10)
        assert got.values == pytest.approx(torch.linalg.eigvalsh(M).flip(0)[:2].tolist(), rel=1e-8)
    assert len({r.hvps for r in batched}) > 1


def test_stacked_operator_equals_each_member():
    """vmapped forward-over-reverse over stacked weights = each member's own Hessian (dense, float64)."""
    from mupdsl.measure.hvp import StackedHessianOperator
    from mupdsl.measure.sharpness import measure_stacked

    model, batch = tiny("attention")
    names = [n for n, _ in model.named_parameters()]
    states = []
    for seed in range(3):
        torch.manual_seed(seed)
        states.append({n: torch.randn_like(p) * 0.5 for n, p in model.named_parameters()})
    stacked = {n: torch.stack([s[n] for s in states]) for n in names}
    op = StackedHessianOperator(model, stacked, batch)
    V = torch.randn(3, op.dim, dtype=torch.float64)
    HV = op.hvp(V)
    scale = torch.rand(3, op.dim, dtype=torch.float64) + 0.5
    results = measure_stacked(model, stacked, batch, scale=scale, top_k=2, tol=1e-9, directional=True)
    for k, state in enumerate(states):
        with torch.no_grad():
            for n in names:
                model.get_parameter(n).copy_(state[n])
        single, flat, f, H = dense(model, batch)
        assert torch.allclose(HV[k], H @ V[k], rtol=1e-8, atol=1e-10)
        assert torch.allclose(op.gradient()[k], single.gradient(), rtol=1e-8, atol=1e-12)
        alone = measure(model, batch, scale=scale[k], top_k=2, tol=1e-9, directional=True)
        assert results[k].eigenvalues == pytest.approx(alone.eigenvalues, rel=1e-8)
        assert results[k].directional == pytest.approx(alone.directional, rel=1e-8)
        S = torch.diag(scale[k])
        assert results[k].eigenvalues == pytest.approx(torch.linalg.eigvalsh(S @ H @ S).flip(0)[:2].tolist(),
                                                       rel=1e-7)


def test_lanczos_names_a_non_finite_operator_and_handles_degenerate_spectra():
    from mupdsl.measure.lanczos import lanczos

    with pytest.raises(FloatingPointError, match="non-finite"):
        lanczos(lambda x: x * float("nan"), 20)
    eigen = lanczos(lambda x: 0.125 * x, 300, dtype=torch.float64)   # every eigenvalue equal: one step, exact
    assert eigen.top == pytest.approx(0.125) and eigen.hvps == 1 and eigen.converged


def test_a_warm_start_on_an_overtaken_direction_still_finds_the_top():
    """Started on last step's top eigenvector, which is still an eigenvector but no longer the largest (the
    eigenvalues crossed), the first Ritz pair has residual ≈ 0; the warm-start rule (a minimum Krylov dimension and
    a real random part) finds the new top instead of accepting it."""
    from mupdsl.measure.lanczos import WARM_MIN_STEPS, lanczos

    torch.manual_seed(0)
    spectrum = torch.rand(2000, dtype=torch.float64) * 0.9
    spectrum[5], spectrum[17] = 1.0, 1.2
    previous = torch.zeros(2000, dtype=torch.float64)
    previous[5] = 1.0
    eigen = lanczos(lambda v: spectrum * v, 2000, tol=1e-3, start=previous, dtype=torch.float64)
    assert eigen.top == pytest.approx(1.2, rel=1e-3) and eigen.hvps >= WARM_MIN_STEPS
    settled = lanczos(lambda v: spectrum * v, 2000, tol=1e-3, start=eigen.vectors, dtype=torch.float64)
    assert settled.top == pytest.approx(1.2, rel=1e-3) and settled.hvps == WARM_MIN_STEPS   # cheap when unmoved


@pytest.mark.parametrize("batched", [False, True])
def test_top_k_finds_every_copy_of_a_repeated_eigenvalue(batched):
    """One Krylov vector per distinct eigenvalue: a single-vector Lanczos returns diag(2,2,2,1,…)'s top-2 as
    [2, 1]; the deflation check adds the hidden copies (and costs its HVPs), against a dense eigvalsh."""
    from mupdsl.measure.lanczos import lanczos, lanczos_batched

    torch.manual_seed(1)
    Q, _ = torch.linalg.qr(torch.randn(60, 60, dtype=torch.float64))
    spectrum = torch.cat([torch.tensor([2.0, 2.0, 2.0, 1.0], dtype=torch.float64), torch.linspace(-1, 0.5, 56)])
    A = Q @ torch.diag(spectrum) @ Q.T
    dense = torch.linalg.eigvalsh(A).flip(0)
    if batched:
        B = torch.stack([A, 2 * A])
        found = lanczos_batched(lambda V, m: torch.bmm(B[m], V.unsqueeze(-1)).squeeze(-1), 2, 60, k=4, tol=1e-9,
                                dtype=torch.float64)
        assert found[1].values == pytest.approx((2 * dense[:4]).tolist(), rel=1e-7)
        eigen = found[0]
    else:
        eigen = lanczos(lambda v: A @ v, 60, k=4, tol=1e-9, dtype=torch.float64)
    assert eigen.values == pytest.approx(dense[:4].tolist(), rel=1e-7)      # [2, 2, 2, 1]
    for value, vector in zip(eigen.values, eigen.vectors):
        assert torch.linalg.vector_norm(A @ vector - value * vector) < 1e-6


@pytest.mark.parametrize("spec,optimizer", [("mup_adafactor", "adafactor"), ("mup", "adafactor_unscaled")])
def test_adafactor_preconditioner_after_one_step_and_its_sharpness_against_a_dense_hessian(spec, optimizer):
    """After one Adafactor step v̂ is known in closed form (β2_1 = 0: v = g² for a vector, R Cᵀ/mean(R) of the row
    and column means of g² for a matrix), so S² = (lr_p/η0) · max(ε₂, RMS(p)) / √v̂ (without parameter scaling:
    no RMS factor) is checked against numbers computed here from the gradient, with the ε₁ floor (v̂ ≤ ε₁², ε₁ large
    enough to catch some coordinates); then λmax(S H S) by the tool and the floor's share of its top eigenvector
    against a dense float64 eigendecomposition."""
    from mupdsl.compile import compile_model
    from mupdsl.measure.hvp import Batch
    from mupdsl.measure.sharpness import adafactor_preconditioner, measure

    torch.manual_seed(0)
    compiled = compile_model(spec, "mupdsl.models.mlp", width=8, base_width=4, optimizer=optimizer,
                             overrides={"eta0": 0.01, "eps0": 0.02})
    model = compiled.model.double()
    names = [t.name for t in compiled.plan.tensors]
    opt = compiled.optimizer()
    x, y = torch.randn(16, 40, dtype=torch.float64), torch.randint(0, 10, (16,))
    torch.nn.functional.cross_entropy(model(x), y).backward()
    grads = {n: model.get_parameter(n).grad.detach().clone() for n in names}
    opt.step()
    lrs = {n: lr for n, (lr, _, _) in compiled.settings().items()}
    S, floor = adafactor_preconditioner(model, names, lrs, 0.01, opt)
    expected, expected_floor = [], []
    for n in names:
        p, g = model.get_parameter(n).detach(), grads[n]
        group = next(gr for gr in opt.param_groups if any(q is model.get_parameter(n) for q in gr["params"]))
        eps1, eps2 = group["eps"]
        eps1 = torch.finfo(torch.float64).eps if eps1 is None else eps1
        if g.dim() > 1:
            row, col = (g * g).mean(dim=-1, keepdim=True), (g * g).mean(dim=-2, keepdim=True)
            v_hat = row @ col / row.mean().clamp(min=eps1 ** 2)     # the row means floored at ε₁²
        else:
            v_hat = g * g
        rms = max(eps2, float(p.norm() / p.numel() ** 0.5)) if optimizer == "adafactor" else 1.0
        expected.append((lrs[n] / 0.01 * rms / v_hat.clamp(min=eps1 ** 2).sqrt()).reshape(-1))
        expected_floor.append((v_hat <= eps1 ** 2).reshape(-1))
    torch.testing.assert_close(S.square(), torch.cat(expected), rtol=1e-9, atol=0)
    assert torch.equal(floor, torch.cat(expected_floor)) and 0 < int(floor.sum()) < floor.numel()

    flat = torch.cat([model.get_parameter(n).detach().reshape(-1) for n in names])
    shapes = [model.get_parameter(n).shape for n in names]

    def loss_of(vector):
        parts = dict(zip(names, (t.reshape(s) for t, s in zip(vector.split([s.numel() for s in shapes]), shapes))))
        return torch.nn.functional.cross_entropy(torch.func.functional_call(model, parts, (x,)), y)

    H = torch.autograd.functional.hessian(loss_of, flat)
    values, vectors = torch.linalg.eigh(S[:, None] * H * S[None, :])
    result = measure(model, Batch((x,), y), scale=S, floor=floor, names=names, tol=1e-10)
    assert result.sharpness == pytest.approx(values[-1].item(), rel=1e-6)
    share = vectors[floor, -1].square().sum().item()
    assert share > 0.1 and result.floor_share == pytest.approx(share, rel=1e-4)


def test_cli_measures_adafactor_and_refuses_optimizers_without_a_diagonal_preconditioner(tmp_path):
    """`mupdsl sharpness -o adafactor` gives λmax(S H S) with Adafactor's S against 2/η0: the same training redone
    here reaches the saved weights exactly, and the command's value equals the top eigenvalue of S H S from a
    dense float64 Hessian with S from those optimizer states. SignSGD, Lion and Muon are refused with the reason,
    and `next` is Adam's only."""
    import json

    from click.testing import CliRunner

    from mupdsl.cli import main
    from mupdsl.compile import compile_model
    from mupdsl.compile.factory import load_factory
    from mupdsl.measure.sharpness import preconditioner
    from mupdsl.train import ModuleReplica, Schedule, train

    torch.set_default_dtype(torch.float32)
    path, state = tmp_path / "small.py", tmp_path / "state.pt"
    path.write_text(SMALL_MODEL)
    base = ["sharpness", "mup_adafactor", str(path), "--width", "12", "--base-width", "6", "--batch-size", "16",
            "--trace-samples", "0"]
    result = CliRunner().invoke(main, base + ["-o", "adafactor", "--set", "eta0=0.01", "--train-steps", "3",
                                              "--tol", "1e-6", "--json", "--save-state", str(state)])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["eos_threshold"] == pytest.approx(2 / 0.01) and doc["converged"]

    compiled = compile_model("mup_adafactor", str(path), width=12, base_width=6, optimizer="adafactor",
                             overrides={"eta0": 0.01}, seed=0)
    torch.manual_seed(0)
    batch = Batch(*load_factory(str(path)).training_batch(16))
    replica = ModuleReplica(compiled)
    train(replica, lambda step: (batch.inputs, batch.targets, True), Schedule(3), loss="ce", diverge_factor=None)
    saved = torch.load(state)
    assert all(torch.equal(saved[k], v) for k, v in compiled.model.state_dict().items())
    names = [t.name for t in compiled.plan.tensors]
    lrs = {name: lr for name, (lr, _, _) in compiled.settings().items()}
    S = preconditioner(compiled.model, names, lrs, 0.01, replica.optimizer, "adafactor").double()
    model = compiled.model.double()
    op, _, _, H = dense(model, Batch(tuple(x.double() for x in batch.inputs), batch.targets))
    assert op.names == names
    exact = float(torch.linalg.eigvalsh(S[:, None] * H * S[None, :]).max())
    assert doc["sharpness"] == pytest.approx(exact, rel=1e-3)

    for optimizer in ("signsgd", "lion", "muon"):
        result = CliRunner().invoke(main, ["sharpness", "mup", str(path), "--width", "12", "-o", optimizer,
                                           "--train-steps", "1"])
        assert result.exit_code == 2 and "no diagonal preconditioner" in result.output, result.output
    result = CliRunner().invoke(main, base + ["-o", "adafactor", "--train-steps", "1", "--preconditioner", "next"])
    assert result.exit_code == 2 and "Adam's v̂" in result.output
