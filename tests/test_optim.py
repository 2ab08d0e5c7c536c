"""SignSGD, Lion, Muon and torch's Adafactor against steps computed by hand on tiny tensors, and the folding rule
of each family (a weight multiplier moved into the optimizer's settings trains the same)."""

import functools
import math

import pytest
import torch

from mupdsl.optim import Combined, Lion, Muon, SignSGD, adafactor_class, fold_settings, newton_schulz
from mupdsl.optim.families import ADAFACTOR_EPS2, ADAFACTORS
from mupdsl.optim.muon import NS_COEFFICIENTS, torch_muon_groups


def _param(values):
    return torch.nn.Parameter(torch.tensor(values, dtype=torch.float32))


def _step(opt, p, grad):
    p.grad = torch.tensor(grad, dtype=torch.float32)
    opt.step()


def test_signsgd_is_the_sign_of_the_gradient_with_decoupled_decay():
    p = _param([1.0, -2.0, 3.0])
    _step(SignSGD([p], lr=0.1), p, [0.5, -0.1, 0.0])
    assert torch.allclose(p.detach(), torch.tensor([0.9, -1.9, 3.0]))
    p = _param([1.0, -2.0, 3.0])
    _step(SignSGD([p], lr=0.1, weight_decay=0.5), p, [0.5, -0.1, 0.0])
    # p (1 - 0.1 * 0.5) - 0.1 sign(g)
    assert torch.allclose(p.detach(), torch.tensor([0.85, -1.8, 2.85]))


def test_signum_takes_the_sign_of_the_momentum():
    p = _param([1.0])
    opt = SignSGD([p], lr=0.1, momentum=0.9)
    _step(opt, p, [0.5])          # m = 0.05 -> +1
    _step(opt, p, [-0.4])         # m = 0.045 - 0.04 = 0.005 -> still +1
    assert torch.allclose(p.detach(), torch.tensor([0.8]))
    _step(opt, p, [-1.0])         # m = 0.0045 - 0.1 < 0 -> -1
    assert torch.allclose(p.detach(), torch.tensor([0.9]))


def test_lion_interpolates_with_beta1_and_tracks_with_beta2():
    p = _param([1.0, 1.0])
    opt = Lion([p], lr=0.1, betas=(0.9, 0.99), weight_decay=0.5)
    _step(opt, p, [1.0, 1.0])     # c = 0.1 g -> +1; m = 0.01 g
    assert torch.allclose(p.detach(), torch.tensor([0.85, 0.85]))   # 1 * (1 - 0.05) - 0.1
    assert torch.allclose(opt.state[p]["exp_avg"], torch.tensor([0.01, 0.01]))
    # c = 0.9 * 0.01 + 0.1 g: g = -0.05 gives +0.004 (+1), g = -0.1 gives -0.001 (-1)
    _step(opt, p, [-0.05, -0.1])
    expected = torch.tensor([0.85 * 0.95 - 0.1, 0.85 * 0.95 + 0.1])
    assert torch.allclose(p.detach(), expected)
    assert torch.allclose(opt.state[p]["exp_avg"], torch.tensor([0.0099 - 0.0005, 0.0099 - 0.001]))


def _quintic(x: float, steps: int = 5) -> float:
    a, b, c = NS_COEFFICIENTS
    for _ in range(steps):
        x = a * x + b * x ** 3 + c * x ** 5
    return x


def test_newton_schulz_on_a_diagonal_matrix_is_the_scalar_iteration():
    g = torch.diag(torch.tensor([3.0, 0.5]))
    norm = math.hypot(3.0, 0.5)
    expected = torch.diag(torch.tensor([_quintic(3.0 / norm), _quintic(0.5 / norm)]))
    assert torch.allclose(newton_schulz(g), expected, atol=1e-5)
    assert torch.allclose(newton_schulz(7.0 * g), expected, atol=1e-5)   # invariant to the gradient's scale


def test_newton_schulz_singular_values_are_near_one():
    torch.manual_seed(0)
    for shape in ((16, 8), (8, 16), (12, 12), (6, 3, 2, 2)):
        s = torch.linalg.svdvals(newton_schulz(torch.randn(shape)).reshape(shape[0], -1))
        assert 0.5 < s.min() and s.max() < 1.3, (shape, s)


def test_muon_first_step_is_minus_lr_times_the_orthogonalised_gradient():
    p = torch.nn.Parameter(torch.zeros(2, 2))
    opt = Muon([p], lr=0.1, momentum=0.95, weight_decay=0.0)
    p.grad = torch.diag(torch.tensor([3.0, 0.5]))
    opt.step()
    norm = math.hypot(3.0, 0.5)
    expected = -0.1 * torch.diag(torch.tensor([_quintic(3.0 / norm), _quintic(0.5 / norm)]))
    assert torch.allclose(p.detach(), expected, atol=1e-6)


@pytest.mark.skipif(not hasattr(torch.optim, "Muon"), reason="torch.optim.Muon needs torch >= 2.9")
def test_torch_muon_groups_step_as_muon_without_a_shape_factor():
    torch.manual_seed(0)
    ours = [torch.nn.Parameter(torch.randn(s)) for s in ((32, 8), (8, 32))]
    theirs = [torch.nn.Parameter(p.detach().clone()) for p in ours]
    a = Muon([{"params": ours, "lr": 0.05, "weight_decay": 0.1}])
    b = torch.optim.Muon(torch_muon_groups([{"params": theirs, "lr": 0.05, "weight_decay": 0.1}]),
                         adjust_lr_fn="original")
    for _ in range(3):
        grads = [torch.randn(p.shape) for p in ours]
        for p, q, g in zip(ours, theirs, grads):
            p.grad, q.grad = g.clone(), g.clone()
        a.step()
        b.step()
    for p, q in zip(ours, theirs):   # torch orthogonalises in bfloat16
        assert torch.allclose(p, q, atol=0.02 * 0.05 * 3, rtol=0)


def test_adafactor_step_is_scaled_by_the_parameter_rms():
    cls = adafactor_class()
    p = _param([3.0, -4.0])                       # RMS = sqrt(12.5)
    _step(cls([p], lr=0.01), p, [0.2, 0.3])       # first step: v = g², U = sign(g), α = lr · RMS(p)
    step = 0.01 * math.sqrt(12.5)
    assert torch.allclose(p.detach(), torch.tensor([3.0 - step, -4.0 - step]))


@pytest.mark.skipif(not hasattr(torch.optim, "Adafactor"), reason="torch.optim.Adafactor needs torch >= 2.5")
def test_adafactor_equals_torch_below_its_cap_and_is_not_capped_above():
    """mupdsl's Adafactor is torch's single-tensor algorithm with ρ_t = lr: step for step the same while
    lr ≤ 1/√t (matrices factored, vectors not, weight decay, clipping), and a rate above the cap still counts —
    torch trains η = 1 and η = 2 alike, mupdsl does not."""
    torch.manual_seed(0)
    shapes = [(6, 5), (5,), (3, 4, 2)]
    start = [torch.randn(s) for s in shapes]
    grads = [[torch.randn(s) for s in shapes] for _ in range(20)]

    def run(cls, lr, **kw):
        params = [torch.nn.Parameter(x.clone()) for x in start]
        opt = cls(params, lr=lr, **kw)
        for step in grads:
            for p, g in zip(params, step):
                p.grad = g.clone()
            opt.step()
        return [p.detach() for p in params]

    ours, theirs = adafactor_class(), torch.optim.Adafactor
    assert ours is not theirs
    for kw in ({}, {"weight_decay": 0.1}, {"d": 2.0}):
        for a, b in zip(run(ours, 0.01, **kw), run(theirs, 0.01, foreach=False, **kw)):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    assert all(torch.equal(a, b) for a, b in zip(run(theirs, 1.0, foreach=False), run(theirs, 2.0, foreach=False)))
    assert not any(torch.allclose(a, b) for a, b in zip(run(ours, 1.0), run(ours, 2.0)))


def _adafactor_run(make, start, grads):
    params = [torch.nn.Parameter(x.clone()) for x in start]
    opt = make(params)
    for step in grads:
        for p, g in zip(params, step):
            p.grad = g.clone()
        opt.step()
    return [p.detach() for p in params]


def test_adafactor_without_parameter_scaling_is_the_scale_free_step_and_equals_huggingfaces():
    """scale_parameter=False: the first step is −lr·sign(g) whatever RMS(p) (v = g², no clipping at RMS 1); over 20
    steps the whole algorithm (factored v̂, clipping, decoupled decay) equals HuggingFace's Adafactor(scale_parameter
    =False, relative_step=False), and with scaling on it equals HuggingFace's scaled one — an independent
    implementation (its ε₁ is added to g², so it takes ε₁²)."""
    transformers = pytest.importorskip("transformers")
    p = _param([3.0, -4.0])
    _step(adafactor_class()([p], lr=0.01, scale_parameter=False), p, [0.2, -0.3])
    assert torch.allclose(p.detach(), torch.tensor([3.0 - 0.01, -4.0 + 0.01]))

    torch.manual_seed(0)
    shapes = [(6, 5), (5,), (3, 4, 2)]
    start = [torch.randn(s) for s in shapes]
    grads = [[torch.randn(s) for s in shapes] for _ in range(20)]
    hf = transformers.optimization.Adafactor
    for scale in (False, True):
        for decay in ((0.0, 0.1) if not scale else (0.0,)):   # HF decays by the scaled rate: same only unscaled
            ours = _adafactor_run(lambda ps: adafactor_class()(ps, lr=0.01, weight_decay=decay, eps=(1e-4, 1e-3),
                                                               scale_parameter=scale), start, grads)
            theirs = _adafactor_run(lambda ps: hf(ps, lr=0.01, weight_decay=decay, eps=(1e-8, 1e-3),
                                                  scale_parameter=scale, relative_step=False), start, grads)
            for a, b in zip(ours, theirs):
                torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_adafactor_runs_on_a_torch_without_one(monkeypatch):
    monkeypatch.delattr(torch.optim, "Adafactor", raising=False)
    p = _param([3.0, -4.0])
    _step(adafactor_class()([p], lr=0.01), p, [0.2, 0.3])
    assert torch.isfinite(p).all()


def _train(make_opt, weight, mult, grads_fn, steps=4):
    w = torch.nn.Parameter(weight.clone())
    opt = make_opt(w)
    for t in range(steps):
        w.grad = grads_fn(mult * w.detach(), t) * mult   # d loss / d w = mult · d loss / d W
        opt.step()
    return mult * w.detach()


@pytest.mark.parametrize("optimizer", ["sgd", "adam", "adamw", "signsgd", "lion", "muon", "adafactor",
                                       "adafactor_unscaled"])
def test_fold_settings_train_a_multiplier_exactly(optimizer):
    """W = f·w with the folded settings moves as f·w with the plain ones (a power of two: no rounding)."""
    torch.manual_seed(0)
    classes = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "signsgd": SignSGD,
               "lion": Lion, "muon": Muon, "adafactor": adafactor_class(),
               "adafactor_unscaled": functools.partial(adafactor_class(), scale_parameter=False)}
    w0 = torch.randn(6, 4)
    target = torch.randn(6, 4)

    def grads(W, t):   # a quadratic loss in the effective weight, with a step-dependent target
        return W - target * (1 + 0.1 * t)

    f, lr, wd, eps = 0.25, 0.01, 0.1, 1e-8
    folded = fold_settings(optimizer, f, lr, wd, eps if optimizer in ("adam", "adamw") + ADAFACTORS else None)

    def make(lr_, wd_, eps_, eps2_factor=1.0):
        def build(p):
            kw = {"lr": lr_, "weight_decay": wd_}
            if optimizer in ("adam", "adamw"):
                kw["eps"] = eps_
            if optimizer in ADAFACTORS:
                kw["eps"] = (eps_, ADAFACTOR_EPS2 * eps2_factor)
            return classes[optimizer]([p], **kw)
        return build

    plain = _train(make(lr, wd, eps), w0, f, grads)
    carried = _train(make(folded.lr, folded.wd, folded.eps, folded.eps2_factor), f * w0, 1.0, grads)
    assert torch.allclose(plain, carried, rtol=1e-5, atol=1e-6), (plain - carried).abs().max()


@pytest.mark.parametrize("scale_parameter", [True, False])
def test_adafactor_folds_exactly_where_the_row_means_of_g2_are_below_eps1(scale_parameter):
    """Gradients of about 3e-3 with ε₁ = 1e-4: the row means of g² (about 1e-5) are below ε₁, where torch floors
    them; that floor must move with the fold as g² does (ε₁ / |f|, so ε₁² / f²), and torch's ε₁ would not."""
    torch.manual_seed(0)
    w0, target = torch.randn(6, 4), torch.randn(6, 4)
    optimizer = "adafactor" if scale_parameter else "adafactor_unscaled"
    f, lr, eps = 0.25, 0.01, 1e-4
    folded = fold_settings(optimizer, f, lr, None, eps)

    def make(lr_, eps_, eps2_factor=1.0):
        return lambda p: adafactor_class()([p], lr=lr_, eps=(eps_, ADAFACTOR_EPS2 * eps2_factor),
                                           scale_parameter=scale_parameter)

    def grads(W, t):
        return 3e-3 * (W - target * (1 + 0.1 * t))

    plain = _train(make(lr, eps), w0, f, grads)
    carried = _train(make(folded.lr, folded.eps, folded.eps2_factor), f * w0, 1.0, grads)
    assert (f * 3e-3 * (f * w0 - target)).square().mean() < eps      # torch's floor would bind
    assert torch.allclose(plain, carried, rtol=1e-5, atol=1e-7), (plain - carried).abs().max()


def test_combined_steps_every_part_and_shares_their_groups():
    p, q = _param([1.0]), _param([1.0])
    opt = Combined({"sign": SignSGD([p], lr=0.1), "lion": Lion([q], lr=0.2)})
    assert opt.param_groups[0] is opt.parts["sign"].param_groups[0]
    p.grad, q.grad = torch.tensor([1.0]), torch.tensor([-1.0])
    opt.step()
    assert p.item() == pytest.approx(0.9) and q.item() == pytest.approx(1.2)
    opt.zero_grad()
    assert p.grad is None and q.grad is None
    state = opt.state_dict()
    opt.load_state_dict(state)
    assert set(state["parts"]) == {"sign", "lion"}


@pytest.mark.skipif(not hasattr(torch.optim, "Adafactor"), reason="torch.optim.Adafactor needs torch >= 2.5")
def test_torch_adafactor_for_a_plan_with_rate_rules_is_warned_about():
    from mupdsl.compile import compile_model

    compiled = compile_model("mup_adafactor", "mupdsl.models.mlp", width=128, base_width=64, optimizer="adafactor")
    assert type(compiled.optimizer()).__module__ == "mupdsl.optim.adafactor"
    with pytest.warns(UserWarning, match=r"caps its relative step"):
        compiled.optimizer(cls=torch.optim.Adafactor)
