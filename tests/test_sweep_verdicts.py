"""The sweep's verdicts from synthetic trial records (no training): transfer needs three sizes with η* inside the
grid, "wider is better" beside it, sizes without η* kept with the reason; the γ sweep's slopes; and the CLI: one
JSON document on stdout, exit 1 only when a spec that claims transfer FAILs."""

import json
import math
import re

import numpy as np
import pytest
from click.testing import CliRunner

from mupdsl.cli import main
from mupdsl.sweep import load_experiment, plan_trials, sweep_document
from mupdsl.sweep.analysis import REL_TOL, phase, shift_spread, transfer, transfer_verdict, wider_verdict
from mupdsl.sweep.report import transfer_section
from mupdsl.sweep.keys import gate_keys
from mupdsl.sweep.store import Store

from helpers import TINY as TINY_SWEEP

LRS = [2.0 ** k for k in range(-8, 1)]


def records(widths, optimum, *, spec="a", seeds=(0,), offset=lambda w: 1.0, status=lambda w, lr: "done",
            noise=0.0):
    """One trial per (width, lr, seed): a parabola in log η with its minimum at ``optimum(width)``, raised by
    ``offset(width)``; seeds differ by ``noise``."""
    out = []
    for w in widths:
        for lr in LRS:
            for s in seeds:
                st = status(w, lr)
                loss = (math.log(lr) - math.log(optimum(w))) ** 2 + offset(w) + noise * s
                out.append({"id": f"{spec}-{w}-{lr}-{s}", "spec": spec, "width": w, "depth": None, "lr": lr,
                            "seed": s, "gamma": None, "status": st,
                            "final_loss": loss if st == "done" else (math.inf if st == "diverged" else None),
                            "final_eval": None, "error": "boom" if st == "crashed" else None, "seconds": 0.1})
    return out


def test_one_size_is_undecided():
    a = transfer(records([64], lambda w: 2.0 ** -4))["a"]
    assert a["transfer"] == "UNDECIDED" and "at least 3" in a["transfer_reason"]
    assert a["wider_is_better"] == "UNDECIDED"


def test_two_sizes_are_undecided_even_when_eta_stays():
    a = transfer(records([16, 64], lambda w: 2.0 ** -4))["a"]
    assert a["shift"] == pytest.approx(0.0, abs=1e-9)
    assert a["transfer"] == "UNDECIDED" and "2 widths" in a["transfer_reason"]


def test_eta_star_at_the_grid_edge_is_undecided():
    a = transfer(records([16, 64, 256], lambda w: 2.0 ** -4 * w / 16))["a"]    # the widest one's η* is 2^0
    assert a["inside"] == {16: True, 64: True, 256: False} and not a["bracketed"]
    assert a["transfer"] == "UNDECIDED"
    assert "grid's edge at width 256" in a["transfer_reason"] and "shift ≥ 4.00" in a["transfer_reason"]
    a = transfer(records([16, 64, 256], lambda w: 2.0 ** -12))["a"]          # below the grid at every width
    assert a["transfer"] == "UNDECIDED" and a["shift"] == pytest.approx(0.0, abs=1e-9)


def test_every_trial_diverged_is_reported_and_undecided(tmp_path):
    trials = records([16, 64, 256], lambda w: 2.0 ** -4, status=lambda w, lr: "diverged")
    a = transfer(trials)["a"]
    assert a["eta_star"] == {16: None, 64: None, 256: None} and a["shift"] is None
    assert a["failed"] == {w: "every trial diverged" for w in (16, 64, 256)}
    assert a["transfer"] == "UNDECIDED" and "every trial diverged" in a["transfer_reason"]
    assert a["wider_is_better"] == "UNDECIDED"
    doc = _document(tmp_path, trials, ungated=[])
    assert doc["note"] == "every trial diverged (27)" and doc["diverged"] == 27
    assert doc["specs"]["a"]["eta_star"] == {"16": None, "64": None, "256": None}
    assert "NaN" not in json.dumps(doc, allow_nan=False)
    from mupdsl.sweep import write_report
    report, _ = write_report(tmp_path)
    text = report.read_text()
    assert "No result: every trial diverged" in text
    assert "256: — (every trial diverged)" in text and not re.search(r"\bnan\b", text, re.I)


def test_a_size_whose_trials_all_diverged_or_crashed_is_kept():
    def status(w, lr):
        return "diverged" if w == 256 else "crashed" if w == 1024 else "done"

    a = transfer(records([16, 64, 256, 1024], lambda w: 2.0 ** -4, status=status))["a"]
    assert set(a["eta_star"]) == {16, 64, 256, 1024}
    assert a["failed"] == {256: "every trial diverged", 1024: "every trial crashed"}
    assert a["counts"][1024] == {"done": 0, "diverged": 0, "crashed": 9}
    assert a["transfer"] == "UNDECIDED"
    assert "width 256: every trial diverged" in a["transfer_reason"]
    assert "width 1024: every trial crashed" in a["transfer_reason"]


def test_three_bracketed_sizes_within_one_step_pass():
    a = transfer(records([16, 64, 256], lambda w: 2.0 ** -4 * (w > 16 and 2 or 1)))["a"]   # one grid step
    assert a["bracketed"] and a["shift"] == pytest.approx(1.0, abs=1e-6)
    assert a["transfer"] == "PASS" and a["wider_is_better"] == "PASS"
    a = transfer(records([16, 64, 256], lambda w: 2.0 ** -4 * (w / 16) ** 0.2))["a"]   # 0.8 grid steps
    assert a["bracketed"] and a["shift"] == pytest.approx(0.8, abs=1e-6) and a["transfer"] == "PASS"


def test_a_shift_of_more_than_one_step_fails():
    a = transfer(records([16, 64, 256], lambda w: 2.0 ** -7 * (w / 16) ** 0.5))["a"]   # 2 grid steps
    assert a["bracketed"] and a["shift"] == pytest.approx(2.0, abs=1e-6)
    assert a["transfer"] == "FAIL" and "2.00 grid steps" in a["transfer_reason"]


def seeded(optimum, widths=(16, 64, 256), seeds=(0, 1)):
    """Trials whose loss is a parabola in log η with its minimum at ``optimum(width, seed)``."""
    return [{"spec": "a", "width": w, "lr": lr, "seed": s, "gamma": None, "status": "done",
             "final_loss": (math.log(lr) - math.log(optimum(w, s))) ** 2}
            for w in widths for lr in LRS for s in seeds]


def test_seeds_that_agree_keep_the_verdict_and_report_their_spread():
    a = transfer(records([16, 64, 256], lambda w: 2.0 ** -4 * (w / 16) ** 0.2, seeds=(0, 1, 2), noise=0.01))["a"]
    assert a["shift_spread"] == pytest.approx((0.8, 0.8), abs=1e-6)   # a seed's offset does not move η*
    assert a["transfer"] == "PASS" and "over seed resamples 0.80–0.80" in a["transfer_reason"]
    one = transfer(records([16, 64, 256], lambda w: 2.0 ** -7 * (w / 16) ** 0.5))["a"]
    assert one["shift_spread"] is None and "resamples" not in one["transfer_reason"]


def test_a_shift_that_seed_noise_puts_on_both_sides_of_one_step_is_undecided():
    # At width 256 seed 0's η* is 0.6 grid steps above the narrower widths' and seed 1's 1.5: the mean curve's
    # vertex is 1.05 steps up, a FAIL on the point estimate. Resampling two seeds gives seed 0 twice (a quarter
    # of the resamples: 0.6), one of each (a half: 1.05) or seed 1 twice (a quarter: 1.5), so the 5th and 95th
    # percentiles are 0.6 and 1.5 exactly.
    trials = seeded(lambda w, s: 2.0 ** -4 * (2.0 ** (0.6 if s == 0 else 1.5) if w == 256 else 1.0))
    a = transfer(trials)["a"]
    assert a["shift"] == pytest.approx(1.05, abs=1e-6)
    assert a["shift_spread"] == pytest.approx((0.6, 1.5), abs=1e-6)
    assert a["transfer"] == "UNDECIDED" and "add seeds" in a["transfer_reason"]
    assert "0.60–1.50 over seeds" in "\n".join(transfer_section({"a": a}))
    # the same spread on one side of the bound decides
    far = transfer(seeded(lambda w, s: 2.0 ** -5 * (2.0 ** (1.6 if s == 0 else 2.5) if w == 256 else 1.0)))["a"]
    assert far["shift_spread"] == pytest.approx((1.6, 2.5), abs=1e-6) and far["transfer"] == "FAIL"
    near = transfer(seeded(lambda w, s: 2.0 ** -4 * (2.0 ** (0.1 if s == 0 else 0.9) if w == 256 else 1.0)))["a"]
    assert near["shift_spread"] == pytest.approx((0.1, 0.9), abs=1e-6) and near["transfer"] == "PASS"


def test_a_crashed_trial_leaves_only_itself_out_of_the_resamples():
    """As in the point estimate: the crashed seed keeps its other rates. A seed far off at width 256 keeps the
    verdict UNDECIDED whether or not one of its trials, far from the optimum, crashed."""
    def trials(crash):
        out = []
        for t in seeded(lambda w, s: 2.0 ** -5 * 2.0 ** ((0.0, 0.1, 1.6 if w == 256 else 0.0)[s]), seeds=(0, 1, 2)):
            if crash and (t["width"], t["seed"], t["lr"]) == (256, 2, LRS[0]):
                t = {**t, "status": "crashed", "final_loss": None}
            out.append(t)
        return out
    clean, crashed = transfer(trials(False))["a"], transfer(trials(True))["a"]
    assert crashed["shift"] == pytest.approx(clean["shift"])
    assert crashed["shift_spread"] == pytest.approx(clean["shift_spread"])
    assert clean["transfer"] == crashed["transfer"] == "UNDECIDED"
    one = {16: {0: {0.1: 1.0, 0.2: 0.5, 0.4: 1.0}}, 64: {0: {0.1: 1.0, 0.2: 0.5, 0.4: 1.0}}}
    assert shift_spread(one, math.log(2)) is None                       # one run per size: no spread


def test_the_estimate_and_its_spread_must_agree_on_a_side_of_one_step():
    inside, step = {16: True, 64: True, 256: True}, math.log(2)
    flat, moving = {16: 0.1, 64: 0.1, 256: 0.1}, {16: 0.1, 64: 0.1, 256: 0.1 * 2 ** 1.5}
    assert transfer_verdict(flat, inside, step, spread=(1.05, 2.1))[0] == "UNDECIDED"   # resamples all above
    assert transfer_verdict(flat, inside, step, spread=(0.0, 0.4))[0] == "PASS"
    assert transfer_verdict(moving, inside, step, spread=(0.9, 2.0))[0] == "UNDECIDED"
    assert transfer_verdict(moving, inside, step, spread=(1.2, 2.0))[0] == "FAIL"


def test_seeds_are_resampled_in_pairs_across_widths_when_every_width_has_them():
    """A seed sees the same batches at every width, so a seed's offset common to all widths is not noise in the
    shift: paired resamples keep it out. Widths with different seeds are drawn independently."""
    common = seeded(lambda w, s: 2.0 ** -5 * 2.0 ** (0.8 if s else -0.8))
    a = transfer(common)["a"]
    assert a["shift"] == pytest.approx(0.0, abs=1e-6) and a["shift_spread"] == pytest.approx((0.0, 0.0), abs=1e-6)
    apart = [t if t["width"] != 256 else {**t, "seed": t["seed"] + 10} for t in common]
    a = transfer(apart)["a"]
    assert a["shift_spread"][1] > 1.0 and a["transfer"] == "UNDECIDED"


def test_a_width_sweep_over_two_depths_resamples_each_depths_runs_in_any_order():
    trials = [{**t, "depth": d, "final_loss": t["final_loss"] + 0.1 * d}
              for d in (2, 4) for t in seeded(lambda w, s: 2.0 ** -5 * 2.0 ** (0.5 * s * (w == 256)))]
    forward, backward = transfer(trials)["a"], transfer(trials[::-1])["a"]
    assert forward["shift_spread"] == pytest.approx(backward["shift_spread"])
    assert forward["shift"] == pytest.approx(backward["shift"])


def test_wider_is_better_fails_when_the_best_loss_grows_with_width():
    grows = transfer(records([16, 64, 256], lambda w: 2.0 ** -4, offset=lambda w: 0.1 * math.log2(w)))["a"]
    assert grows["transfer"] == "PASS"                         # η* stays: the shift alone would pass
    assert grows["wider_is_better"] == "FAIL" and "width 256" in grows["wider_is_better_reason"]
    flat = transfer(records([16, 64, 256], lambda w: 2.0 ** -4, offset=lambda w: 1.0 + REL_TOL / 2 * (w > 16)))
    assert flat["a"]["wider_is_better"] == "PASS"              # within the one-seed relative tolerance
    shrinks = transfer(records([16, 64, 256], lambda w: 2.0 ** -4, offset=lambda w: 1.0 / w))["a"]
    assert shrinks["wider_is_better"] == "PASS"


def test_wider_is_better_noise_comes_from_seeds():
    best = {16: [1.00, 1.10, 0.90], 64: [1.05, 1.15, 0.95]}   # +0.05 against a seed spread of 0.1
    assert wider_verdict(best)[0] == "PASS"
    best = {16: [1.00, 1.001, 0.999], 64: [1.05, 1.051, 1.049]}
    assert wider_verdict(best)[0] == "FAIL"
    assert wider_verdict({16: [1.0], 64: [1.0 + 3 * REL_TOL]})[0] == "FAIL"
    assert wider_verdict({16: [1.0], 64: None}, {64: "every trial diverged"}) == \
        ("UNDECIDED", "width 64: every trial diverged")


def test_transfer_verdict_rule():
    inside = {16: True, 64: True, 256: True}
    assert transfer_verdict({16: 0.1, 64: 0.1, 256: 0.2}, inside, math.log(2))[0] == "PASS"
    assert transfer_verdict({16: 0.1, 64: 0.1, 256: 0.41}, inside, math.log(2))[0] == "FAIL"
    assert transfer_verdict({16: 0.1, 64: 0.1}, inside, math.log(2))[0] == "UNDECIDED"
    assert transfer_verdict({16: 0.1, 64: 0.1, 256: 0.2}, {**inside, 64: False}, math.log(2))[0] == "UNDECIDED"


def test_gamma_sweep_reports_slopes_never_a_transfer_verdict():
    trials = []
    for gamma in (0.35, 0.5, 0.7, 1.0, 2.0, 4.0, 8.0):
        best = 2.0 ** -4 * gamma ** 2 if gamma <= 1 else 2.0 ** -4 * gamma ** 0.5
        for t in records([256], lambda w, b=best: b, spec="richness"):
            t["gamma"] = gamma
            trials.append(t)
    assert transfer(trials) == {}
    p = phase(trials)["richness"]
    assert p["slope_small"] == pytest.approx(2.0, abs=0.3) and p["slope_large"] == pytest.approx(0.5, abs=0.3)


def test_a_phase_cell_is_the_mean_over_seeds_and_a_diverged_seed_makes_it_infinite():
    def t(lr, seed, loss, width=32, status="done"):
        return {"spec": "richness", "gamma": 1.0, "lr": lr, "seed": seed, "width": width, "depth": None,
                "status": status, "final_loss": loss if status == "done" else None}
    for losses in ([1.0, 1.0, 4.0], [4.0, 1.0, 1.0]):           # order does not matter
        p = phase([t(0.01, s, v) for s, v in enumerate(losses)] + [t(0.1, s, 1.9) for s in range(3)])["richness"]
        assert p["loss"][0][0] == pytest.approx(2.0)
    p = phase([t(0.1, 0, None, status="diverged"), t(0.1, 1, 0.5), t(0.01, 0, 1.0), t(0.01, 1, 1.0)])["richness"]
    assert p["loss"][0].tolist() == [1.0, math.inf]             # as transfer() counts it
    wide = phase([t(0.01, 0, 1.0), t(0.1, 0, 3.0), t(0.01, 0, 5.0, width=64), t(0.1, 0, 0.5, width=64)])
    assert wide["richness"]["size"] == {"width": 64, "depth": None} and wide["richness"]["other_sizes"] == 1
    assert wide["richness"]["loss"][0].tolist() == [5.0, 0.5]   # one size, not the widths pooled


def _document(root, trials, ungated, widths=(16, 64, 256)):
    """A store holding ``trials`` (with small curves) and an experiment.json beside it."""
    exp = {"name": "synthetic", "specs": sorted({t["spec"] for t in trials}), "ungated": ungated,
           "widths": list(widths), "model": "m.py", "dataset": "teacher", "optimizer": "sgd", "steps": 5,
           "batch_size": 8}
    (root / "experiment.json").write_text(json.dumps(exp))
    store = Store(root)
    for t in trials:
        curves = {"loss": np.linspace(2.0, 1.0, 5), "sharp_step": np.array([0.0, 4.0]),
                  "sharpness": np.array([3.0, 5.0]), "eval_step": np.array([5.0]), "eval_loss": np.array([1.2]),
                  "eos": np.array([2.0 / t["lr"]])}
        store.record(t, t["status"], curves, final_loss=t["final_loss"], final_eval=t["final_eval"],
                     error=t["error"], seconds=t["seconds"])
    store.close()
    return sweep_document(root)


# the shared tiny sweep with a third width and a nine-rate grid (factors of 2), so η* can be bracketed at every width
TINY = TINY_SWEEP.replace("widths = [16, 32]", "widths = [16, 32, 64]").replace(
    "lrs = [0.05, 0.2, 0.8]", "lrs = [0.00390625, 0.0078125, 0.015625, 0.03125, 0.0625, 0.125, 0.25, 0.5, 1.0]")


def _prefill(out, exp, optimum):
    """Every planned trial of ``exp`` stored as finished with a synthetic loss (its η* per spec and width from
    ``optimum``) and both gates passed: a sweep over ``out`` then trains nothing."""
    store = Store(out)
    for spec, key in gate_keys(exp).items():
        store.record_gate(key, spec, "PASS", "")
    for t in plan_trials(exp):
        loss = (math.log(t["lr"]) - math.log(optimum(t["spec"], t["width"]))) ** 2 + 0.1
        curves = {"loss": np.full(exp.steps, loss), "sharp_step": np.array([0.0, 5.0, 10.0]),
                  "sharpness": np.array([1.0, 2.0, 3.0]), "eos": np.array([2.0 / t["lr"]])}
        store.record(t, "done", curves, final_loss=loss, final_eval=loss, error=None, seconds=0.0)
    store.close()


def test_sweep_exit_code_follows_claimed_transfer(tmp_path):
    path = tmp_path / "exp.toml"
    path.write_text(TINY)
    exp = load_experiment(path)
    out = tmp_path / "out"
    _prefill(out, exp, lambda spec, w: 2.0 ** -4 if spec == "mup" else 2.0 ** -7 * (w / 16) ** 1.5)
    result = CliRunner().invoke(main, ["sweep", str(path), "--out", str(out)])
    assert result.exit_code == 0, result.output                  # sp FAILs, but sp is ungated: no claim
    assert "transfer PASS" in result.output and "transfer FAIL" in result.output
    _prefill(out, exp, lambda spec, w: 2.0 ** -7 * (w / 16) ** 1.5)
    result = CliRunner().invoke(main, ["sweep", str(path), "--out", str(out), "--json"])
    assert result.exit_code == 1                                  # mup claims transfer and FAILs
    doc = json.loads(result.stdout)
    assert doc["ran"] == 0 and doc["specs"]["mup"]["transfer"] == "FAIL" and doc["specs"]["mup"]["claimed"]
    report = CliRunner().invoke(main, ["report", str(out), "--json"])
    assert report.exit_code == 0
    assert json.loads(report.stdout)["specs"]["mup"]["shift"] == pytest.approx(3.0, abs=1e-6)


def test_sweep_json_is_one_document_with_eta_verdicts_and_curves(tmp_path):
    path = tmp_path / "exp.toml"
    path.write_text(TINY.replace("widths = [16, 32, 64]", "widths = [16, 32]").replace(
        "lrs = [0.00390625, 0.0078125, 0.015625, 0.03125, 0.0625, 0.125, 0.25, 0.5, 1.0]", "lrs = [0.05, 0.2, 0.8]"))
    result = CliRunner().invoke(main, ["sweep", str(path), "--out", str(tmp_path / "out"), "--json"])
    assert result.exit_code == 0, result.output                  # two widths: UNDECIDED, not a FAIL
    doc = json.loads(result.stdout)                               # progress went to stderr
    assert doc["trials"] == doc["ran"] == 12
    mup = doc["specs"]["mup"]
    assert mup["transfer"] == "UNDECIDED" and "at least 3" in mup["transfer_reason"]
    assert mup["wider_is_better"] in ("PASS", "FAIL", "UNDECIDED") and mup["wider_is_better_reason"]
    assert set(mup["eta_star"]) == set(mup["sizes"]) == {"16", "32"}
    assert len(mup["trials"]) == 6
    trial = next(t for t in mup["trials"] if t["status"] == "done")
    assert trial["final_loss"] == pytest.approx(trial["curves"]["loss"]["value"][-1], rel=1e-6)   # 15 // 10 = 1
    assert trial["curves"]["loss"]["step"] == list(range(15))
    assert trial["curves"]["sharpness"]["step"] == [0, 5, 10] and len(trial["curves"]["sharpness"]["value"]) == 3
    assert trial["curves"]["eval_loss"]["step"] == [5, 10, 15] and trial["eos_threshold"] > 0
    report = CliRunner().invoke(main, ["report", str(tmp_path / "out"), "--json"])
    assert report.exit_code == 0 and json.loads(report.stdout)["specs"]["mup"]["eta_star"] == mup["eta_star"]
