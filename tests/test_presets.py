"""Every preset parses, and its width/depth exponents equal tables written here from the papers."""

from fractions import Fraction as F

import pytest

from mupdsl.spec import explain, load_spec, preset_names

H = F(1, 2)
# (a, b, c) of input, hidden, output in TP4's convention: multiplier n^-a, init std n^-b, LR n^-c.
WIDTH_TABLE = {
    # TP4 p.3 / TP5 Table 3 gray: PyTorch SP with one global LR; TP4b Ex. 2.2.2 for Adam.
    ("sp", "sgd"): [(0, 0, 0), (0, H, 0), (0, H, 0)],
    ("sp", "adam"): [(0, 0, 0), (0, H, 0), (0, H, 0)],
    # The same exponents with the papers' fan-in normal init (He et al. 2015; TP5 Table 3 init var 1/fan_in).
    ("sp_kaiming", "sgd"): [(0, 0, 0), (0, H, 0), (0, H, 0)],
    ("sp_kaiming", "adam"): [(0, 0, 0), (0, H, 0), (0, H, 0)],
    # Muon RMS-matched to AdamW (Liu et al. 2025 Eq. 4): hidden lr ∝ √width; AdamW's SP elsewhere.
    ("sp_muon_rms", "muon"): [(0, 0, 0), (0, H, -H), (0, H, 0)],
    # TP4 Table 1 (NTP); TP4b Def. 2.4.1 for Adam.
    ("ntp", "sgd"): [(0, 0, 0), (H, 0, 0), (H, 0, 0)],
    ("ntp", "adam"): [(0, 0, H), (H, 0, 1), (H, 0, H)],
    # TP5 Table 8 (SGD: in LR fan_out, out mult 1/fan_in LR fan_in; Adam: hidden LR 1/fan_in).
    ("mup", "sgd"): [(0, 0, -1), (0, H, 0), (1, 0, -1)],
    ("mup", "adam"): [(0, 0, 0), (0, H, 1), (1, 0, 0)],
    # Seed 002 Eq. 1 with gamma = gamma0 sqrt(N), eta = eta0 gamma^2; param_tables §3.1/§3.2 mean-field rows.
    ("mean_field", "sgd"): [(0, 0, -1), (H, 0, -1), (1, 0, -1)],
    ("mean_field", "adam"): [(0, 0, 0), (H, 0, H), (1, 0, 0)],
    # Seed 003 Eqs. 11-14: readout 1/(gamma N) with gamma O(1), SGD LR eta N.
    ("richness", "sgd"): [(0, 0, -1), (H, 0, -1), (1, 0, -1)],
    # u-µP (unit-scaling lr_scale_func_adam): hidden mult and LR fan_in^-1/2, readout 1/fan_in.
    ("umup", "adam"): [(0, 0, 0), (H, 0, H), (1, 0, 0)],
    # u-µP's SGD section: µP's SGD moved into the unit-init form (TP5 Lemma J.1), 2a+c as ("mup", "sgd").
    ("umup", "sgd"): [(0, 0, -1), (H, 0, -1), (1, 0, -1)],
}
for depth_preset in ("depth_mup_k1", "depth_mup_k2", "completep"):
    for opt in ("sgd", "adam"):
        WIDTH_TABLE[(depth_preset, opt)] = WIDTH_TABLE[("mup", opt)]

# Depth: branch multiplier exponent, and the depth exponent c of the LR of hidden weights in residual blocks.
DEPTH_TABLE = {
    ("mup", "sgd"): (0, 0), ("mup", "adam"): (0, 0),
    ("depth_mup_k1", "sgd"): (H, 0),      # TP6 Table 1: SGD LR eta
    ("depth_mup_k1", "adam"): (H, H),     # TP6 Table 1: Adam LR eta / sqrt(L)
    ("depth_mup_k2", "adam"): (H, H),     # TP6 §9 Eq. 6: same rule for k = 2
    ("completep", "adam"): (1, 0),        # CompleteP Table 1: alpha = 1, LR factor m_L^(alpha-1) = 1
    ("completep", "sgd"): (1, -1),        # general rule L^(2 alpha - 1), Zheng Table 5: eta r_L
}

ATTENTION = {"sp": H, "ntp": H, "mup": 1, "mean_field": 1, "depth_mup_k1": 1, "completep": 1, "umup": 1}


def test_every_preset_named():
    assert set(preset_names()) >= {"sp", "ntp", "mup", "mean_field", "depth_mup_k1", "depth_mup_k2",
                                   "completep", "umup", "richness"}


@pytest.mark.parametrize("name", preset_names())
def test_preset_parses_and_has_sgd_and_adam(name):
    spec = load_spec(name)
    sections = {rule.section for rule in spec.rules} | {ns.section for ns in spec.network}
    text = open(spec.path).read()
    assert {"sgd", "adam"} <= sections
    for opt in ("sgd", "adam", "adamw"):
        e = explain(spec, opt)
        for role in ("input", "hidden", "output", "bias", "norm", "embedding", "scalar"):
            assert e.roles[role] is not None, (name, opt, role)
    assert sections <= {"all", "sgd", "adam", "adamw", "signsgd", "lion", "adafactor", "muon"}
    assert text.lstrip().startswith("#"), "each preset names its source in a leading comment"


@pytest.mark.parametrize("key", sorted(WIDTH_TABLE))
def test_width_exponents(key):
    name, opt = key
    e = explain(load_spec(name), opt)
    got = [(e.roles[r].a, e.roles[r].b, e.roles[r].c) for r in ("input", "hidden", "output")]
    assert got == [tuple(F(x) for x in row) for row in WIDTH_TABLE[key]]


@pytest.mark.parametrize("key", sorted(DEPTH_TABLE))
def test_depth_exponents(key):
    name, opt = key
    e = explain(load_spec(name), opt)
    branch, c_hidden = DEPTH_TABLE[key]
    assert e.branch_depth_exponent == F(branch)
    assert e.residual_roles["hidden"].c_depth == F(c_hidden)
    assert e.roles["input"].c_depth == 0 and e.roles["output"].c_depth == 0  # no depth factor outside blocks


@pytest.mark.parametrize("name", sorted(ATTENTION))
def test_attention_exponent(name):
    assert explain(load_spec(name), "adam").attention_exponent == F(ATTENTION[name])


def test_richness_is_centered_with_gamma_hyperparameter():
    spec = load_spec("richness", {"gamma0": 4})
    net = explain(spec, "sgd").network
    assert net.center is True and net.gamma.coef == 4 and net.gamma.is_const


def test_mup_adam_epsilon_and_weight_decay_scale_with_width():
    e = explain(load_spec("mup"), "adamw")
    assert e.roles["hidden"].texts["wd"] == "wd0 * fan_in_mult"  # TP5 App. B.3, CompleteP Table 1
    assert e.roles["input"].texts["eps"] == "eps0 / width_mult"  # TP5 App. B.3: eps ~ 1/fan_in


def test_completep_epsilon_only_in_residual_blocks():
    e = explain(load_spec("completep"), "adam")
    assert e.residual_roles["hidden"].texts["eps"] == "eps0 / width_mult / depth_mult^alpha"
    assert e.roles["hidden"].texts["eps"] == "eps0 / width_mult"


@pytest.mark.parametrize("gain", [None, 1.0])
def test_sp_kaiming_draws_the_fan_in_normal_init(gain):
    """Weights N(0, gain²/fan_in) with gain √2 by default (Kaiming for ReLU) or 1 (LeCun), biases zero."""
    import math

    from mupdsl.compile import compile_model

    overrides = {} if gain is None else {"gain": gain}
    model = compile_model("sp_kaiming", "mupdsl.models.mlp", width=1024, overrides=overrides).model
    g = math.sqrt(2) if gain is None else gain
    for layer, fan_in in ((model.input, 40), (model.hidden[0], 1024), (model.readout, 1024)):
        layer = layer.requires_grad_(False)
        assert float(layer.weight.std()) == pytest.approx(g / math.sqrt(fan_in), rel=0.05)
        assert float(layer.weight.mean()) == pytest.approx(0.0, abs=0.05 * g / math.sqrt(fan_in))
        assert not layer.bias.any()
