"""The compiled model against models written by hand from the papers (float64, <= 1e-10 over 5 steps).

The compiled model carries each multiplier folded into its weight (W = fold · w, TP5 Lemma J.1), so its weights are
the hand-written model's times the plan's fold, and an ε set by hand on w is ε / |fold| on W."""

import math

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from mupdsl.compile import compile_model
from mupdsl.models import mlp

D, CLASSES = 40, 10


pytestmark = pytest.mark.usefixtures("float64")


def batch(n=16, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, D, generator=g), torch.randint(0, CLASSES, (n,), generator=g)


def fold(compiled, name):
    return compiled.plan.tensor(name).carried.fold


def groups_with_eps(compiled, eps):
    """One group per tensor with the plan's carried lr, and the Adam ε a hand-written model uses on w (ε / |fold| on
    the stored W)."""
    return [dict(params=[compiled.model.get_parameter(t.name)], lr=t.carried.lr, eps=eps / abs(t.carried.fold))
            for t in compiled.plan.tensors]


def train(forward, params_groups, opt_name, steps=5, x_y=None):
    """Run ``steps`` optimizer steps; return the outputs before each step and the final parameters."""
    x, y = x_y or batch()
    opt = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam}[opt_name](params_groups, lr=1.0)
    outs = []
    for _ in range(steps):
        out = forward(x)
        outs.append(out.detach().clone())
        loss = F.cross_entropy(out, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return outs


class HandMuP(nn.Module):
    """µP by TP5 Table 8, written out: PyTorch's default init with the readout weight and every bias whose layer
    fan-in scales multiplied by sqrt(m) (Θ(1) init: the base width's std), forward W_out/m; per-layer LRs."""

    def __init__(self, width, base_width, depth, seed):
        super().__init__()
        torch.manual_seed(seed)
        self.net = mlp.MLP(width, depth)   # PyTorch default init, as the spec's `keep`
        self.m = width / base_width
        with torch.no_grad():
            for p in [self.net.readout.weight, self.net.readout.bias] + [l.bias for l in self.net.hidden]:
                p.mul_(math.sqrt(self.m))

    def forward(self, x):
        h = torch.relu(self.net.input(x))
        for layer in self.net.hidden:
            h = torch.relu(layer(h))
        return F.linear(h, self.net.readout.weight / self.m, self.net.readout.bias)

    def groups(self, opt, eta0):
        n = self.net
        if opt == "sgd":  # Table 8 SGD: input & biases × fan_out_mult, hidden × 1, output × fan_in_mult
            return [dict(params=[n.input.weight, n.input.bias] + [l.bias for l in n.hidden], lr=eta0 * self.m),
                    dict(params=[l.weight for l in n.hidden], lr=eta0),
                    dict(params=[n.readout.weight], lr=eta0 * self.m),
                    dict(params=[n.readout.bias], lr=eta0)]
        return [dict(params=[l.weight for l in n.hidden], lr=eta0 / self.m),  # Table 8 Adam: hidden 1/fan_in
                dict(params=[n.input.weight, n.input.bias, n.readout.weight, n.readout.bias]
                     + [l.bias for l in n.hidden], lr=eta0)]


@pytest.mark.parametrize("opt", ["sgd", "adam"])
def test_mup_equals_hand_written(opt):
    eta0 = 0.05 if opt == "sgd" else 1e-3
    compiled = compile_model("mup", "mupdsl.models.mlp", width=128, base_width=32, depth=2, optimizer=opt,
                             overrides={"eta0": eta0, "eps0": 0.0} if opt == "adam" else {"eta0": eta0}, seed=3)
    hand = HandMuP(128, 32, 2, seed=3)
    assert fold(compiled, "readout.weight") == pytest.approx(32 / 128)   # the readout's 1/m, folded
    for name, p in hand.net.named_parameters():
        assert torch.allclose(p * fold(compiled, name), compiled.model.get_parameter(name), rtol=1e-14, atol=0), name
    opt_groups = groups_with_eps(compiled, 1e-8) if opt == "adam" else compiled.param_groups()
    a = train(compiled.model, opt_groups, opt)
    b = train(hand, hand.groups(opt, eta0), opt)
    for s, (u, v) in enumerate(zip(a, b)):
        assert torch.allclose(u, v, rtol=0, atol=1e-10), (s, (u - v).abs().max())
    for name, p in hand.net.named_parameters():
        assert torch.allclose(p * fold(compiled, name), compiled.model.get_parameter(name), rtol=0, atol=1e-10), name


class HandSeed002(nn.Module):
    """Seed 002 Eq. 1 (residual MLP, N(0,1) weights): h1 = W0 x/√D; h_{l+1} = τ h_l + W_l φ(h_l)/(√N L^α);
    f = W_L φ(h_L)/(√N γ), γ = γ0 √N; SGD LR η0 γ²."""

    def __init__(self, width, depth, alpha, tau, gamma0, seed):
        super().__init__()
        torch.manual_seed(seed)
        self.net = ResMLP(width, depth)
        g = torch.Generator().manual_seed(seed + 1)
        with torch.no_grad():
            for p in self.net.parameters():
                p.copy_(torch.randn(p.shape, generator=g))
        self.N, self.L, self.alpha, self.tau, self.gamma = width, depth, alpha, tau, gamma0 * math.sqrt(width)

    def forward(self, x):
        h = x @ self.net.input.weight.T / math.sqrt(D)
        for layer in self.net.blocks:
            h = self.tau * h + torch.relu(h) @ layer.lin.weight.T / (math.sqrt(self.N) * self.L ** self.alpha)
        return torch.relu(h) @ self.net.readout.weight.T / (math.sqrt(self.N) * self.gamma)


class Block(nn.Module):
    def __init__(self, width):
        super().__init__()
        self.lin = nn.Linear(width, width, bias=False)

    def forward(self, h):
        return self.lin(torch.relu(h))


class ResMLP(nn.Module):
    """Seed 002 Eq. 1's network in plain PyTorch: h + W φ(h) per block, no biases."""

    def __init__(self, width, depth=3):
        super().__init__()
        self.input = nn.Linear(D, width, bias=False)
        self.blocks = nn.ModuleList(Block(width) for _ in range(depth))
        self.readout = nn.Linear(width, CLASSES, bias=False)

    def forward(self, x):
        h = self.input(x)
        for block in self.blocks:
            h = h + block(h)
        return self.readout(torch.relu(h))


SEED002_SPEC = """
# seed 002 Eq. 1 with alpha = 1/2: mean_field with Depth-µP's branch
extends mean_field
network { alpha = 1/2 }
"""


def _seed002_compiled(tmp_path, width, depth, seed, opt, eta0, gamma0):
    spec = tmp_path / "seed002.param"
    spec.write_text(SEED002_SPEC)

    def build(width: int, depth: int = 3):
        return ResMLP(width, depth)

    compiled = compile_model(str(spec), build, width=width, base_width=width, depth=depth, optimizer=opt,
                             overrides={"eta0": eta0, "gamma0": gamma0, "eps0": 0.0}, seed=seed)
    return compiled


@pytest.mark.parametrize("opt", ["sgd", "adam"])
def test_seed002_eq1_equals_hand_written(tmp_path, opt):
    width, depth, seed, eta0, gamma0 = 64, 4, 5, 0.02 if opt == "sgd" else 1e-3, 2.0
    compiled = _seed002_compiled(tmp_path, width, depth, seed, opt, eta0, gamma0)
    hand = HandSeed002(width, depth, alpha=0.5, tau=1.0, gamma0=gamma0, seed=seed)
    # same N(0,1) draws: copy the compiled init (the spec's normal(std = 1)) into the hand-written model
    with torch.no_grad():
        for name, p in hand.net.named_parameters():
            p.copy_(compiled.model.get_parameter(name) / fold(compiled, name))
            assert abs(float(p.std()) - 1) < 0.15, name  # N(0, 1)
    plan = compiled.plan
    assert [b.k for b in plan.residual_blocks] == [1] * depth
    if opt == "sgd":
        lr = eta0 * hand.gamma ** 2  # η = η0 γ²
        hand_groups = [dict(params=list(hand.net.parameters()), lr=lr)]
    else:  # App. K Table 1 (width part): hidden η0 N^-1/2, input and readout η0
        hand_groups = [dict(params=[b.lin.weight for b in hand.net.blocks], lr=eta0 / math.sqrt(width), eps=1e-8),
                       dict(params=[hand.net.input.weight, hand.net.readout.weight], lr=eta0, eps=1e-8)]
    groups = groups_with_eps(compiled, 1e-8) if opt == "adam" else compiled.param_groups()
    a = train(compiled.model, groups, opt)
    b = train(hand, hand_groups, opt)
    for s, (u, v) in enumerate(zip(a, b)):
        assert torch.allclose(u, v, rtol=0, atol=1e-10), (s, (u - v).abs().max())


class HandDepthMuP(nn.Module):
    """Depth-µP (k = 1) in ratio form: µP (Table 8) + branch (L/L0)^-1/2; Adam hidden LR η/(m·sqrt(L/L0))."""

    def __init__(self, width, base_width, depth, base_depth, seed):
        super().__init__()
        torch.manual_seed(seed)
        self.net = ResMLP(width, depth)
        self.m, self.dm = width / base_width, depth / base_depth
        with torch.no_grad():
            self.net.readout.weight.mul_(math.sqrt(self.m))

    def forward(self, x):
        h = self.net.input(x)
        for block in self.net.blocks:
            h = h + block(h) / math.sqrt(self.dm)
        return F.linear(torch.relu(h), self.net.readout.weight / self.m)

    def groups(self, opt, eta0):
        n = self.net
        hidden = [b.lin.weight for b in n.blocks]
        if opt == "sgd":
            return [dict(params=[n.input.weight], lr=eta0 * self.m), dict(params=hidden, lr=eta0),
                    dict(params=[n.readout.weight], lr=eta0 * self.m)]
        return [dict(params=hidden, lr=eta0 / self.m / math.sqrt(self.dm)),
                dict(params=[n.input.weight, n.readout.weight], lr=eta0)]


@pytest.mark.parametrize("opt", ["sgd", "adam"])
def test_depth_mup_k1_equals_hand_written(opt):
    eta0 = 0.05 if opt == "sgd" else 1e-3

    def build(width: int, depth: int = 2):
        return ResMLP(width, depth)

    compiled = compile_model("depth_mup_k1", build, width=96, base_width=32, depth=8, base_depth=2,
                             optimizer=opt, overrides={"eta0": eta0}, seed=11)
    hand = HandDepthMuP(96, 32, 8, 2, seed=11)
    for name, p in hand.net.named_parameters():
        assert torch.allclose(p * fold(compiled, name), compiled.model.get_parameter(name), rtol=1e-14, atol=0), name
    groups = groups_with_eps(compiled, 1e-12) if opt == "adam" else compiled.param_groups()
    hand_groups = hand.groups(opt, eta0)
    if opt == "adam":
        for g in hand_groups:
            g["eps"] = 1e-12
    a = train(compiled.model, groups, opt)
    b = train(hand, hand_groups, opt)
    for s, (u, v) in enumerate(zip(a, b)):
        assert torch.allclose(u, v, rtol=0, atol=1e-10), (s, (u - v).abs().max())


@pytest.mark.parametrize("opt", ["sgd", "adam"])
def test_mup_at_base_width_equals_sp(opt):
    kw = dict(width=64, base_width=64, depth=2, optimizer=opt, seed=7, overrides={"eta0": 0.01})
    mup = compile_model("mup", "mupdsl.models.gpt", **kw)
    sp = compile_model("sp", "mupdsl.models.gpt", **kw)
    from mupdsl.models import gpt
    x, y = gpt.example_batch(4)
    for name, p in sp.model.named_parameters():
        assert torch.equal(p, mup.model.get_parameter(name)), name
    assert torch.equal(mup(x), sp(x))
    for c in (mup, sp):
        opt_ = c.optimizer()
        loss = F.cross_entropy(c(x).flatten(0, 1), y.flatten())
        loss.backward()
        opt_.step()
    for name, p in sp.model.named_parameters():
        assert torch.allclose(p, mup.model.get_parameter(name), rtol=0, atol=1e-12), name
    assert torch.allclose(mup(x), sp(x), rtol=0, atol=1e-12)


def test_equivalent_specs_same_trajectory_and_nonequivalent_differ(tmp_path):
    from test_equivalence import TABLE3, TABLE8  # noqa: PLC0415 - the TP5 forms written there

    paths = {}
    for name, text in (("t3", TABLE3), ("t8", TABLE8), ("sp", TABLE3.replace("output    { init = normal(std = fan_in^-1); mult = 1 }",
                                                                             "output    { init = normal(std = fan_in^(-1/2)); mult = 1 }"))):
        paths[name] = tmp_path / f"{name}.param"
        paths[name].write_text(text)
    runs = {}
    for name, path in paths.items():
        c = compile_model(str(path), "mupdsl.models.mlp", width=64, base_width=64, depth=2, optimizer="sgd",
                          overrides={"eta0": 0.05}, seed=2)
        runs[name] = train(c.model, c.param_groups(), "sgd")
    for u, v in zip(runs["t3"], runs["t8"]):
        assert torch.allclose(u, v, rtol=1e-9, atol=1e-12)
    assert not torch.allclose(runs["t3"][-1], runs["sp"][-1], atol=1e-3)
