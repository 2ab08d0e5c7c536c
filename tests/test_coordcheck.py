"""Coordinate check verdicts: PASS for the µP family, FAIL for SP (explode) and NTP (vanish), stable across seeds."""

import json

import pytest
from click.testing import CliRunner

from mupdsl.cli import main
from mupdsl.measure import coordcheck
from mupdsl.measure.coord import judge

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


def test_a_module_called_twice_is_two_entries():
    result = coordcheck("mup", "mupdsl.models.gpt", widths=(32, 64), seeds=1, steps=1, batch_size=4)
    keys = {r["key"] for r in result.records}
    assert {"tok@1", "tok@2"} <= keys   # the tied embedding: lookup and readout


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
    b = {tuple(r[k] for k in key): r for r in alone.records}
    assert a.keys() == b.keys()
    for k, r in b.items():
        for stat in ("rms", "abs_mean", "delta_rms", "delta_abs"):
            if stat in r:
                assert a[k][stat] == pytest.approx(r[stat], rel=1e-4, abs=1e-7), (k, stat)
    assert together.verdict == alone.verdict
