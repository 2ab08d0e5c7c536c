"""Coordinate check verdicts: PASS for the µP family, FAIL for SP (explode) and NTP (vanish), stable across seeds."""

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from mupdsl.cli import main
from mupdsl.measure import coordcheck
from mupdsl.measure import coord
from mupdsl.measure.coord import _Statistics, fit_slopes, judge, undecided
from mupdsl.measure.taps import is_part

FAST = dict(widths=(64, 128, 256, 512), seeds=2, batch_size=16)
MODELS = {
    "mlp": ("mupdsl.models.mlp", "mup"),
    "resconv": ("mupdsl.models.resconv", "depth_mup_k1"),
    "resconv_k2": ("mupdsl.models.resconv:build_k2", "depth_mup_k2"),
    "vit": ("mupdsl.models.vit", "depth_mup_k2"),
    "gpt": ("mupdsl.models.gpt", "depth_mup_k2"),
}


@pytest.mark.parametrize("opt", ["sgd", "adam"])
@pytest.mark.parametrize("name", sorted(MODELS))
def test_mup_family_passes(name, opt):
    model, depth_spec = MODELS[name]
    for spec in ("mup", depth_spec):
        result = coordcheck(spec, model, optimizer=opt, **FAST)
        assert result.verdict == "PASS", (spec, [(f["key"], f["step"], round(f["slope"], 2)) for f in result.failures])


@pytest.mark.parametrize("opt", ["sgd", "adam"])
@pytest.mark.parametrize("name", sorted(MODELS))
def test_sp_explodes_and_ntp_vanishes(name, opt):
    model, _ = MODELS[name]
    sp = coordcheck("sp", model, optimizer=opt, **FAST)
    assert sp.verdict == "FAIL" and any(f["symptom"] == "explode" for f in sp.failures)
    ntp = coordcheck("ntp", model, optimizer=opt, **FAST)
    assert ntp.verdict == "FAIL" and any(f["symptom"] == "vanish" for f in ntp.failures)
    assert not any(f["symptom"] == "explode" and f["quantity"] == "delta_rms" for f in ntp.failures)


@pytest.mark.parametrize("spec,verdict", [("mup", "PASS"), ("sp", "FAIL"), ("ntp", "FAIL")])
def test_verdict_stable_across_seeds(spec, verdict):
    for first in (0, 10, 20):
        result = coordcheck(spec, "mupdsl.models.mlp", optimizer="sgd", first_seed=first, **FAST)
        assert result.verdict == verdict, first


def test_mnist1d_data_and_result_contents(tmp_path):
    result = coordcheck("mup", "mupdsl.models.mlp", data="mnist1d", widths=(32, 64, 128), seeds=2, steps=3)
    assert result.verdict == "PASS"
    keys = {r["key"] for r in result.records}
    assert {"input", "hidden.0", "hidden.1", "readout", "output"} <= keys
    assert {r["step"] for r in result.records} == {0, 1, 2, 3}
    doc = json.loads(json.dumps(result.to_json()))
    assert doc["verdict"] == "PASS" and doc["widths"] == [32, 64, 128]
    result.plot(tmp_path / "coord.png")
    assert (tmp_path / "coord.png").stat().st_size > 10_000


def test_entries_are_the_users_modules():
    """mup-style: the output of each module running a weight op, of each module returning a residual sum, and the
    model's output; the tied table is tapped at both of its modules (lookup and readout)."""
    result = coordcheck("mup", "mupdsl.models.gpt", widths=(32, 64), seeds=1, steps=1, batch_size=4)
    keys = {r["key"] for r in result.records}
    assert {"tok", "pos", "head", "blocks.0.attn.q", "blocks.0.fc", "blocks.0 (residual sum)", "output"} <= keys


def test_a_module_called_twice_is_two_entries(tmp_path):
    path = tmp_path / "twice.py"
    path.write_text(TWICE)
    result = coordcheck("mup", str(path), widths=(32, 64), seeds=1, steps=1, batch_size=4)
    keys = {r["key"] for r in result.records}
    assert {"shared@1", "shared@2"} <= keys and "shared" not in keys


TWICE = """
import torch
from torch import nn


class Net(nn.Module):
    def __init__(self, width):
        super().__init__()
        self.inp = nn.Linear(8, width)
        self.shared = nn.Linear(width, width)
        self.out = nn.Linear(width, 4)

    def forward(self, x):
        return self.out(torch.relu(self.shared(torch.relu(self.shared(torch.relu(self.inp(x)))))))


def build(width):
    return Net(width)


def example_batch(n):
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, 8, generator=g), torch.randint(0, 4, (n,), generator=g)
"""


def test_judge_rules():
    def s(key, step, q, slope, tail=None, stderr=0.0):
        return {"key": key, "step": step, "quantity": q, "slope": slope, "tail_slope": slope if tail is None else tail,
                "stderr": stderr, "diverged": False}
    fails, _ = judge([s("a", 1, "delta_rms", 0.5)], 0.25, 4)
    assert fails[0]["symptom"] == "explode"
    fails, reports = judge([s("q", 1, "delta_rms", -0.4), s("q", 4, "delta_rms", 0.0)], 0.25, 4)
    assert fails == [] and "q" in reports[0]                      # a lag that catches up is reported
    fails, _ = judge([s("h", 4, "delta_rms", -0.5)], 0.25, 4)
    assert fails[0]["symptom"] == "vanish"
    fails, _ = judge([s("h", 2, "delta_rms", 0.5, stderr=0.3)], 0.25, 4)
    assert fails == []                                            # not significant across seeds
    fails, _ = judge([s("h", 2, "delta_rms", 0.4, tail=0.05)], 0.25, 4)
    assert fails == []                                            # flattens at the wide end: transient
    fails, reports = judge([s("output", 0, "rms", -0.5)], 0.25, 4)
    assert fails == [] and reports                                # µP's shrinking logits at init


def test_a_readout_that_vanishes_only_through_its_input_is_reported_not_failed():
    """The readout's change is W0·Δx + ΔW·x; µP's Θ(1/√n) first part may dominate at narrow widths. Excused only
    when the readout's own update does not vanish: a wrong exponent on the readout (its own update vanishing too,
    NTP's symptom) still fails."""
    def s(key, slope, tail=None, step=3):
        return {"key": key, "step": step, "quantity": "delta_rms", "slope": slope,
                "tail_slope": slope if tail is None else tail, "stderr": 0.0, "diverged": False}
    transient = [s("head", -0.4), s("head [input part]", -0.45), s("head [weight part]", -0.1), s("output", -0.41)]
    fails, reports = judge(transient, 0.25, 3)
    assert fails == [] and any("only through W₀·Δx" in r for r in reports)
    assert any(r.startswith("output t=3") for r in reports)
    wrong = [s("head", -0.5), s("head [input part]", -0.5), s("head [weight part]", -0.5), s("output", -0.5)]
    fails, _ = judge(wrong, 0.25, 3)
    assert {f["key"] for f in fails} == {"head", "output"}
    unsplit = [s("head", -0.4), s("output", -0.4)]                  # no parts recorded (vmap): judged as before
    assert {f["key"] for f in judge(unsplit, 0.25, 3)[0]} == {"head", "output"}
    other = [s("head", -0.4), s("head [input part]", -0.45), s("head [weight part]", -0.1), s("output", -0.9)]
    assert [f["key"] for f in judge(other, 0.25, 3)[0]] == ["output"]   # an output that is not the readout's


def test_a_layers_own_update_that_vanishes_behind_its_input_is_reported():
    """A hidden layer's change since init carries its input's: when that is Θ(1), the layer's own update
    (W_t − W₀)x can vanish with width unseen. It is reported at the last step, naming the layer, unless the change
    itself already failed there; a lag at t = 1 and a flattening tail are not. Reported, not failed: µP's own
    updates on third-party models at the test widths reach slopes of −0.46 (docs/coordcheck.md)."""
    def s(key, slope, step=3, tail=None):
        return {"key": key, "step": step, "quantity": "delta_rms", "slope": slope,
                "tail_slope": slope if tail is None else tail, "stderr": 0.0, "diverged": False}
    fails, reports = judge([s("h", -0.05), s("h [own update]", -0.5)], 0.25, 3)
    assert fails == [] and [r for r in reports if r.startswith("h t=3: its own update")]
    fails, reports = judge([s("h", -0.5), s("h [own update]", -0.5)], 0.25, 3)
    assert [f["key"] for f in fails] == ["h"] and not any("own update" in r for r in reports)
    for quiet in ([s("h", 0.0), s("h [own update]", -0.5, step=1), s("h [own update]", 0.0)],
                  [s("h", 0.0), s("h [own update]", -0.4, tail=-0.1)], [s("h", 0.0), s("h [own update]", +0.5)]):
        assert judge(quiet, 0.25, 3) == ([], [])


def test_a_hidden_rate_with_the_wrong_exponent_is_named_though_the_activations_hide_it(tmp_path):
    """Muon's hidden rate times fan_in_mult^(−½): the hidden layers' changes stay flat (the Adam-trained input
    layer changes by Θ(1) and carries them), so only their own updates show it (slope ≈ −½), and the check names
    them; with µP's rate it names none."""
    slow = tmp_path / "slow.param"
    slow.write_text("extends mup_muon\nmuon {\n  default { lr = eta0 * muon0 * (fan_out / fan_in)^(1/2) * "
                    "fan_in_mult^(-1/2) }\n}\n")
    kw = dict(widths=(64, 128, 256, 512), seeds=2, optimizer="muon", extend=0)
    result = coordcheck(str(slow), "mupdsl.models.mlp", **kw)
    named = {r.split(" t=")[0] for r in result.reports if "its own update" in r}
    assert named == {"hidden.0", "hidden.1"}
    own = [x for x in result.slopes if x["key"].endswith("[own update]") and x["step"] == result.steps]
    assert all(x["slope"] < -0.4 for x in own if x["key"].startswith("hidden"))
    right = coordcheck("mup_muon", "mupdsl.models.mlp", **kw)
    assert right.verdict == "PASS" and not any("its own update" in r for r in right.reports)


def test_a_layers_own_update_is_its_weights_change_times_its_input():
    from mupdsl.compile import compile_model
    from mupdsl.measure.taps import OWN_UPDATE, ModuleTaps, tap_points

    compiled = compile_model("mup", "mupdsl.models.mlp", width=64, base_width=32, optimizer="adam")
    taps = ModuleTaps(compiled.model, tap_points(compiled))
    x, y = coord._batch(coord.load_factory("mupdsl.models.mlp"), "example", 16)
    layer = compiled.model.get_submodule("hidden.1")
    w0 = layer.weight.detach().clone()
    inputs = []
    hook = layer.register_forward_hook(lambda m, args, out: inputs.append(args[0].detach()))
    opt = compiled.optimizer()
    taps.start()
    out, first = taps.run(compiled.model, *x)
    assert torch.count_nonzero(first["hidden.1" + OWN_UPDATE]) == 0 and "hidden.1 [input part]" not in first
    opt.zero_grad()
    torch.nn.functional.cross_entropy(out, y).backward()
    opt.step()
    _, now = taps.run(compiled.model, *x)
    expected = torch.nn.functional.linear(inputs[-1], layer.weight.detach() - w0)   # no bias: Θ(1) whatever the rule
    assert torch.allclose(now["hidden.1" + OWN_UPDATE], expected, atol=1e-6 * expected.abs().max().item())
    assert expected.abs().max() > 0
    hook.remove()
    taps.remove()


def test_the_two_parts_of_a_readouts_change_add_up_to_it():
    from mupdsl.compile import compile_model
    from mupdsl.measure.taps import INPUT_PART, WEIGHT_PART, ModuleTaps, tap_points

    compiled = compile_model("mup", "mupdsl.models.mlp", width=64, base_width=32, optimizer="adam")
    points = tap_points(compiled)
    assert points.readouts == {"readout"}
    taps = ModuleTaps(compiled.model, points)
    x, y = coord._batch(coord.load_factory("mupdsl.models.mlp"), "example", 16)
    opt = compiled.optimizer()
    taps.start()
    out, first = taps.run(compiled.model, *x)
    assert torch.count_nonzero(first["readout" + INPUT_PART]) == 0
    for _ in range(2):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(out, y).backward()
        opt.step()
        out, now = taps.run(compiled.model, *x)
    change = now["readout"] - first["readout"]
    parts = now["readout" + INPUT_PART] + now["readout" + WEIGHT_PART]
    assert torch.allclose(parts, change, atol=1e-6 * change.abs().max().item())
    assert now["readout" + WEIGHT_PART].abs().max() > 0 and now["readout" + INPUT_PART].abs().max() > 0
    taps.remove()


@pytest.mark.parametrize("budget", [256 * 2**20, 0])
def test_statistics_are_the_rms_and_mean_abs_of_values_and_changes(budget):
    """Reduced all at the end, or step by step (a budget of 0 bytes, as for a model too wide to keep its steps)."""
    g = torch.Generator().manual_seed(0)
    history = {"a": [torch.randn(2, 3, 5, generator=g) for _ in range(3)],
               "h": [torch.randn(2, 7, generator=g).half() for _ in range(3)]}
    statistics = _Statistics(64, [10, 11], budget=budget)
    for t in range(3):
        statistics.add({key: values[t] for key, values in history.items()})
    records = {(r["key"], r["step"], r["seed"]): r for r in statistics.records()}
    assert len(records) == 2 * 3 * 2
    for key, values in history.items():
        for t, value in enumerate(values):
            for j, seed in enumerate((10, 11)):
                v = value[j].double().numpy().ravel()
                d = v - values[0][j].double().numpy().ravel()
                r = records[key, t, seed]
                assert r["rms"] == pytest.approx(np.sqrt(np.mean(v ** 2)), rel=1e-6)
                assert r["abs_mean"] == pytest.approx(np.mean(np.abs(v)), rel=1e-6)
                if t == 0:
                    assert "delta_rms" not in r
                else:
                    assert r["delta_rms"] == pytest.approx(np.sqrt(np.mean(d ** 2)), rel=1e-5)
                    assert r["delta_abs"] == pytest.approx(np.mean(np.abs(d)), rel=1e-5)


def test_slopes_are_least_squares_fits_of_the_seed_mean():
    rng = np.random.default_rng(0)
    widths = (64, 128, 256, 512, 1024)
    values = {(w, s): rng.uniform(0.5, 2.0) * w ** 0.5 for w in widths for s in range(3)}
    records = [{"key": "k", "step": 1, "width": w, "seed": s, "rms": 1.0, "delta_rms": v}
               for (w, s), v in values.items()]
    (fit,) = [f for f in fit_slopes(records, widths, 3) if f["quantity"] == "delta_rms"]
    x = np.log(widths)
    mean = np.log([np.mean([values[w, s] for s in range(3)]) for w in widths])
    assert fit["slope"] == pytest.approx(np.polyfit(x, mean, 1)[0], rel=1e-12)
    assert fit["tail_slope"] == pytest.approx(np.polyfit(x[-3:], mean[-3:], 1)[0], rel=1e-12)
    per_seed = [np.polyfit(x, np.log([values[w, s] for w in widths]), 1)[0] for s in range(3)]
    assert fit["stderr"] == pytest.approx(np.std(per_seed, ddof=1) / np.sqrt(3), rel=1e-9)


IN_PLACE = """
from torch import nn


def build(width, inplace=False):
    return nn.Sequential(nn.Linear(8, width), nn.ReLU(inplace=inplace), nn.Linear(width, width),
                         nn.ReLU(inplace=inplace), nn.Linear(width, 4))


def build_inplace(width):
    return build(width, True)


def example_batch(n):
    import torch
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, 8, generator=g), torch.randint(0, 4, (n,), generator=g)
"""


def test_a_value_overwritten_in_place_later_is_recorded_as_computed(tmp_path):
    """ReLU(inplace=True) after a tapped Linear: the record is of the Linear's output, as without in-place."""
    path = tmp_path / "net.py"
    path.write_text(IN_PLACE)
    kw = dict(widths=(16, 32), seeds=1, steps=2, batch_size=8)
    plain = coordcheck("mup", f"{path}:build", **kw).records
    inplace = coordcheck("mup", f"{path}:build_inplace", **kw).records
    assert [r["key"] for r in plain] == [r["key"] for r in inplace] and {r["key"] for r in plain} >= {"0", "2"}
    for a, b in zip(plain, inplace):
        assert a.keys() == b.keys()
        for stat in set(a) & {"rms", "abs_mean", "delta_rms", "delta_abs"}:
            assert a[stat] == pytest.approx(b[stat], rel=1e-6), (a["key"], a["step"], stat)


def test_a_tapped_parameter_keeps_its_value_per_step():
    """ViT's cls token is tapped as itself; the optimizer updates it in place, yet each step's record is its own."""
    result = coordcheck("mup", "mupdsl.models.vit", widths=(32, 64), seeds=1, steps=2, batch_size=4, extend=0)
    deltas = [r["delta_rms"] for r in result.records if r["key"] == "cls" and r["step"] > 0]
    assert len(deltas) == 4 and min(deltas) > 0


def test_undecided_entries_are_the_excused_ones_beyond_the_tolerance():
    def s(key, step, q, slope, tail=None, stderr=0.0):
        return {"key": key, "step": step, "quantity": q, "slope": slope, "tail_slope": slope if tail is None else tail,
                "stderr": stderr, "diverged": False}
    slopes = [s("noisy", 4, "delta_rms", -0.45, stderr=0.2),      # vanishing, but not significant across seeds
              s("plateau", 4, "delta_rms", -0.47, tail=-0.02),   # vanishing, but flat over the widest three
              s("grows", 2, "rms", 0.4, tail=0.1),               # an activation growing, flat at the wide end
              s("lag", 1, "delta_rms", -0.5, tail=-0.1),         # vanishing before the last step only: a lag
              s("flat", 4, "delta_rms", -0.1),                   # within the tolerance
              s("output", 0, "rms", -0.5),                       # µP's readout at init
              s("vanish", 4, "delta_rms", -0.5)]                 # a decided failure
    assert undecided(slopes, 0.25, 4) == ["noisy", "plateau", "grows"]


def test_a_width_is_added_when_the_widths_cannot_decide(monkeypatch):
    calls = []

    def once(slopes, tolerance, steps):
        calls.append(sorted({s["key"] for s in slopes}))
        return ["hidden.0"] if len(calls) == 1 else []
    monkeypatch.setattr(coord, "undecided", once)
    kw = dict(widths=(32, 64, 128), seeds=2, steps=2, batch_size=8)
    result = coordcheck("mup", "mupdsl.models.mlp", **kw)
    assert result.verdict == "PASS" and result.widths == [32, 64, 128, 256] and len(calls) == 1
    assert {r["width"] for r in result.records} == {32, 64, 128, 256}
    assert {s["key"] for s in result.slopes} == set(calls[0])  # every entry fitted over the four widths
    assert any("width 256 added" in line and "hidden.0" in line for line in result.reports)
    assert coordcheck("mup", "mupdsl.models.mlp", extend=0, **kw).widths == [32, 64, 128]


def test_cli_exit_codes(tmp_path):
    runner = CliRunner()
    ok = runner.invoke(main, ["coordcheck", "mup", "mupdsl.models.mlp", "--seeds", "2", "--json"])
    assert ok.exit_code == 0, ok.output
    assert json.loads(ok.stdout)["verdict"] == "PASS"
    bad = runner.invoke(main, ["coordcheck", "sp", "mupdsl.models.mlp", "--seeds", "2", "--plot", str(tmp_path / "c.png")])
    assert bad.exit_code == 1 and "FAIL" in bad.stdout and (tmp_path / "c.png").exists()
    for args in (["coordcheck", "mup", "mupdsl.models.mlp", "--widths", "64"],
                 ["coordcheck", "nope", "mupdsl.models.mlp"],
                 ["coordcheck", "mup", "missing.py"]):
        result = runner.invoke(main, args)
        assert result.exit_code == 2, (args, result.output)
        assert "Traceback" not in result.output


transformers = pytest.importorskip("transformers")


@pytest.mark.slow
@pytest.mark.parametrize("opt", ["sgd", "adam"])
@pytest.mark.parametrize("which", ["gpt2", "llama"])
def test_huggingface_verdicts(tmp_path, which, opt):
    from test_compile_plans import HF_GPT2, HF_LLAMA
    path = tmp_path / f"hf_{which}.py"
    path.write_text(HF_GPT2 if which == "gpt2" else HF_LLAMA)
    assert coordcheck("mup", str(path), optimizer=opt, **FAST).verdict == "PASS"
    assert coordcheck("sp", str(path), optimizer=opt, **FAST).verdict == "FAIL"
    ntp = coordcheck("ntp", str(path), optimizer=opt, **FAST)
    assert ntp.verdict == "FAIL" and any(f["symptom"] == "vanish" for f in ntp.failures)


def test_huggingface_gpt2_mup_passes(tmp_path):
    from test_compile_plans import HF_GPT2
    path = tmp_path / "hf_gpt2.py"
    path.write_text(HF_GPT2)
    result = coordcheck("mup", str(path), optimizer="adam", widths=(64, 128, 256), seeds=2, steps=3, batch_size=8)
    assert result.verdict == "PASS", result.failures


@pytest.mark.parametrize("model,optimizer", [("mupdsl.models.mlp", "adam"), ("mupdsl.models.gpt", "sgd")])
def test_batched_seeds_give_the_records_of_seeds_one_by_one(model, optimizer):
    """The vmapped seeds (one (seeds, P) buffer, the plan's optimizer on it) reproduce every record."""
    kw = dict(widths=(32, 64), steps=2, seeds=2, optimizer=optimizer, batch_size=8)
    together = coordcheck("mup", model, batched_seeds=True, **kw)
    alone = coordcheck("mup", model, batched_seeds=False, **kw)
    key = ("width", "seed", "step", "key")
    a = {tuple(r[k] for k in key): r for r in together.records}
    # one at a time, a readout's change is also split in two parts (not recorded under vmap)
    b = {tuple(r[k] for k in key): r for r in alone.records if not is_part(r["key"])}
    assert a.keys() == b.keys()
    for k, r in b.items():
        for stat in ("rms", "abs_mean", "delta_rms", "delta_abs"):
            if stat in r:
                assert a[k][stat] == pytest.approx(r[stat], rel=1e-4, abs=1e-7), (k, stat)
    assert together.verdict == alone.verdict


def test_marginal_failures_over_two_or_three_widths_are_undecided():
    from mupdsl.measure.coord import marginal

    def f(key, slope, diverged=False):
        return {"key": key, "slope": slope, "diverged": diverged}
    assert marginal([f("bert.q", -0.3), f("bert.q", -0.34)], 0.25, 3) == ["bert.q"]   # a fourth width decides
    assert marginal([f("a", -0.3), f("b", -0.9)], 0.25, 3) == []    # one clear failure decides
    assert marginal([f("a", -0.3)], 0.25, 4) == []                   # four widths have a tail slope
    assert marginal([f("a", -0.3)], 0.25, 2) == ["a"]                # two widths cannot tell a trend either
    assert marginal([f("a", 0.3, diverged=True)], 0.25, 3) == []


def test_a_model_file_imports_its_siblings(tmp_path):
    (tmp_path / "parts.py").write_text("from torch import nn\n\ndef mlp(width):\n"
                                       "    return nn.Sequential(nn.Linear(8, width), nn.ReLU(), nn.Linear(width, 4))\n")
    (tmp_path / "net.py").write_text("import torch\nfrom parts import mlp\n\ndef build(width):\n    return mlp(width)\n\n"
                                     "def example_batch(n):\n    return torch.randn(n, 8), torch.randint(0, 4, (n,))\n")
    result = coordcheck("mup", str(tmp_path / "net.py"), widths=(16, 32), seeds=1, steps=1, batch_size=4)
    assert result.verdict in ("PASS", "FAIL")


def test_a_tuple_output_whose_first_element_is_not_the_prediction_gets_a_hint():
    from mupdsl.train.losses import task_loss
    hidden, logits = torch.randn(4, 7, 32), torch.randn(4, 7, 10)
    with pytest.raises(ValueError, match="first element of its tuple output.*Return the logits"):
        task_loss((hidden.reshape(4, 224), logits), torch.zeros(28, dtype=torch.long))
