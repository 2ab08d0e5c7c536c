"""Which trials a sweep measures (``[measure] sharpness_lrs``) and how the report reads the sharpness across widths:
the running median of the figure and each run's median, against hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mupdsl.sweep import ExperimentError, load_experiment, plan_trials, run, sweep_document
from mupdsl.sweep.analysis import sharpness_spread
from mupdsl.sweep.plots import running_median
from mupdsl.sweep.report import write_report
from mupdsl.sweep.trial import experiment_data, train_alone, train_group

SWEEP = """
name = "chosen"
specs = ["mup"]
model = "mupdsl.models.mlp"
dataset = "mnist1d"
widths = [{widths}]
optimizer = "adam"
lrs = {{ min = 0.001, max = 0.004, num = 3 }}
steps = 12
batch_size = 32
num_samples = 400
threads = 1
coordcheck_widths = [64, 128, 256]
[measure]
sharpness_every = 4
eval_every = 6
batch = "train"
batch_size = 64
preconditioner = "next"
{chosen}
"""


def _experiment(tmp_path, chosen: str = "sharpness_lrs = [0.002]", widths: str = "32"):
    path = tmp_path / "exp.toml"
    path.write_text(SWEEP.format(widths=widths, chosen=chosen))
    return load_experiment(path), path


def test_only_the_chosen_rates_are_measured_alone_and_in_a_group(tmp_path):
    exp, _ = _experiment(tmp_path)
    data, cpu = experiment_data(exp), torch.device("cpu")
    trials = plan_trials(exp)
    assert [t["lr"] for t in trials] == pytest.approx([0.001, 0.002, 0.004])
    grouped = train_group(exp, trials, data, cpu)
    for trial, (status, curves, _, _) in zip(trials, grouped):
        _, alone, _, _ = train_alone(exp, trial, data, cpu)
        assert status == "done"
        if trial["lr"] == pytest.approx(0.002):
            assert list(curves["sharp_step"]) == list(alone["sharp_step"]) == [4, 8]
            np.testing.assert_allclose(curves["sharpness"], alone["sharpness"], rtol=1e-3)
        else:
            assert len(curves["sharpness"]) == len(alone["sharpness"]) == 0
        np.testing.assert_allclose(curves["loss"], alone["loss"], rtol=1e-5, atol=1e-6)



def test_a_group_measuring_one_rate_equals_groups_measuring_all_and_none(tmp_path):
    """The chosen member's sharpness and HVP counts are those it has when the whole group is measured (the
    measurement batches come from their own generator, drawn at every measurement step); the other members train
    exactly as with sharpness_every = 0."""
    chosen, _ = _experiment(tmp_path)
    every, _ = _experiment(tmp_path, chosen="")
    none = every.model_copy(update={"measure": every.measure.model_copy(update={"sharpness_every": 0})})
    data, cpu = experiment_data(chosen), torch.device("cpu")
    runs = {name: train_group(exp, plan_trials(exp), data, cpu) for name, exp in
            (("chosen", chosen), ("every", every), ("none", none))}
    for k, lr in enumerate([t["lr"] for t in plan_trials(chosen)]):
        picked, measured_all, unmeasured = (runs[name][k][1] for name in ("chosen", "every", "none"))
        if lr == pytest.approx(0.002):
            np.testing.assert_allclose(picked["sharpness"], measured_all["sharpness"], rtol=1e-6)
            np.testing.assert_array_equal(picked["hvps"], measured_all["hvps"])
        else:
            assert len(picked["sharpness"]) == 0 and len(measured_all["sharpness"]) == 2
            np.testing.assert_array_equal(picked["loss"], unmeasured["loss"])


def test_chosen_rates_are_checked_and_the_default_keeps_old_ids(tmp_path):
    exp, path = _experiment(tmp_path, chosen="")
    before = {t["id"] for t in plan_trials(exp)}

    def ids(chosen: str, every: int = 4) -> set[str]:
        path.write_text(SWEEP.format(widths="32", chosen=chosen).replace("sharpness_every = 4",
                                                                         f"sharpness_every = {every}"))
        return {t["id"] for t in plan_trials(load_experiment(path))}

    assert ids("sharpness_lrs = []") == before
    chosen = ids("sharpness_lrs = [0.002, 0.004]")
    assert chosen.isdisjoint(before)
    # how a rate is written does not matter: order, repeats, and digits within 0.1 % name the grid's own value
    assert ids("sharpness_lrs = [0.004, 0.002, 0.002]") == ids("sharpness_lrs = [0.0019999, 0.004001]") == chosen
    with pytest.raises(ExperimentError, match=r"sharpness_lrs: 0.003 is not a learning rate of the grid "
                                              r"\(nearest: 0.00(4|39)"):
        ids("sharpness_lrs = [0.003]")
    with pytest.raises(ExperimentError, match="sharpness_every = 0 measures none"):
        ids("sharpness_lrs = [0.002]", every=0)


def test_small_keeps_measuring_a_few_rates():
    """``--small`` thins the grid; a chosen rate it drops moves to the nearest kept one instead of leaving the
    choice empty (which would measure every trial)."""
    from pathlib import Path

    from mupdsl.sweep.experiment import small

    demo = load_experiment(Path(__file__).resolve().parent.parent / "runners" / "demo.toml")
    reduced = small(demo)
    assert 0.0128 not in reduced.lr_values()
    assert reduced.measure.sharpness_lrs and set(reduced.measure.sharpness_lrs) <= set(reduced.lr_values())


def test_measured_rate_is_the_nearest_rate_with_a_curve():
    from mupdsl.sweep.analysis import measured_rate

    trials = [{"id": "a", "lr": 0.1, "status": "done"}, {"id": "b", "lr": 0.2, "status": "crashed"},
              {"id": "c", "lr": 0.4, "status": "diverged"}, {"id": "d", "lr": 0.8, "status": "done"}]
    curves = {"a": {"sharpness": np.array([1.0])}, "b": {"sharpness": np.array([2.0])},
              "c": {"sharpness": np.array([3.0])}, "d": {}}
    assert measured_rate(trials, curves.__getitem__, 0.2) == 0.1          # b crashed: its curve does not count
    assert measured_rate(trials, curves.__getitem__, 0.5) == 0.4          # a diverged trial's curve does
    assert measured_rate(trials, lambda _: {}, 0.2) is None


def test_report_shows_the_measured_rate_with_each_runs_median(tmp_path):
    """η* of the base width is not the measured rate here: the figure and the report take the measured rate
    nearest it, and the report's medians are those of the stored curves."""
    exp, _ = _experiment(tmp_path, chosen="sharpness_lrs = [0.001]", widths="32, 64")
    run(exp, tmp_path / "out", say=lambda _: None)
    path, analysis = write_report(tmp_path / "out")
    text = path.read_text()
    star = analysis["mup"]["eta_star"][32]
    nearest = min(exp.lr_values(), key=lambda v: abs(np.log(v) - np.log(star)))
    assert nearest != pytest.approx(0.001)      # the premise: the figure's rate is not the measured one
    assert "Consistency of the sharpness across widths: mup (lr 0.001)" in text
    from mupdsl.sweep.store import Store

    store = Store(tmp_path / "out")
    try:
        medians = {}
        for t in store.trials():
            c = store.curves(t["id"])
            if len(c.get("sharpness", [])):
                assert t["lr"] == pytest.approx(0.001)
                medians[t["width"]] = float(np.median(c["sharpness"]))
    finally:
        store.close()
    assert sorted(medians) == [32, 64]
    assert f"32: {medians[32]:.4g}, 64: {medians[64]:.4g}; widest / narrowest: {medians[64] / medians[32]:.2f}" \
        in text
    spread = sweep_document(tmp_path / "out")["specs"]["mup"]["sharpness_spread"]
    assert spread["lr"] == pytest.approx(0.001)
    assert spread["median"] == {"32": pytest.approx(medians[32]), "64": pytest.approx(medians[64])}
    assert spread["ratio"] == pytest.approx(medians[64] / medians[32])


def test_running_median_and_spread_by_hand():
    values = [1.0, 100.0, 2.0, 3.0, 4.0, 50.0, 5.0]
    # windows of 5 centred on each point, shortened at the ends
    assert running_median(values).tolist() == [2.0, 2.5, 3.0, 4.0, 4.0, 4.5, 5.0]
    assert running_median([7.0]).tolist() == [7.0]
    steps = np.arange(4)
    spread = sharpness_spread({32: (steps, np.array([1.0, 2.0, 30.0, 3.0])), 128: (steps, np.array([4.0, 5.0, 6.0]))})
    assert spread == {"median": {32: 2.5, 128: 5.0}, "ratio": 2.0}
    assert sharpness_spread({32: (steps, np.array([1.0]))}) is None
