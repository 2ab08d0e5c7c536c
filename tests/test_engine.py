"""The one training engine: a vmapped group is the same training as each member alone — losses for every elementwise
optimizer and ε (0 included), sharpness and HVP counts under a schedule — and the schedules are their formulas."""

import math

import numpy as np
import pytest
import torch

from mupdsl.compile import compile_model
from mupdsl.sweep import load_experiment, plan_trials
from mupdsl.sweep.trial import experiment_data, train_alone, train_group
from mupdsl.train import ModuleReplica, Schedule, StackedReplicas, train

MODEL = '''
import torch
from torch import nn

def build(width, depth=None):
    return nn.Sequential(nn.Linear(8, width), nn.Tanh(), nn.Linear(width, width), nn.Tanh(), nn.Linear(width, 3))

def example_batch(batch_size):
    g = torch.Generator().manual_seed(0)
    return torch.randn(batch_size, 8, generator=g), torch.randint(0, 3, (batch_size,), generator=g)
'''

LRS = {"sgd": [0.05, 0.2, 0.5], "adam": [1e-3, 3e-3, 1e-2], "adamw": [1e-3, 3e-3, 1e-2],
       "signsgd": [1e-3, 3e-3, 1e-2], "lion": [1e-4, 3e-4, 1e-3], "adafactor": [0.01, 0.03, 0.1],
       "adafactor_unscaled": [1e-3, 3e-3, 1e-2]}


def members(tmp_path, optimizer, eps0, wd0=0.0):
    (tmp_path / "net.py").write_text(MODEL)
    overrides = {"wd0": wd0} | ({} if eps0 is None else {"eps0": eps0})
    spec = "mup_adafactor" if optimizer == "adafactor" else "mup"
    return [compile_model(spec, str(tmp_path / "net.py"), width=48, base_width=16, optimizer=optimizer,
                          overrides={**overrides, "eta0": lr}, seed=seed)
            for seed, lr in enumerate(LRS[optimizer])]


def batches_for(G, seeds, steps=12, n=64):
    """Per-member minibatches, each member's from its own generator (as the sweep draws them)."""
    data = torch.Generator().manual_seed(7)
    x, y = torch.randn(n, 8, generator=data), torch.randint(0, 3, (n,), generator=data)
    gens = [torch.Generator().manual_seed(s) for s in seeds]

    def draw(step):
        idx = torch.stack([torch.randint(0, n, (16,), generator=g) for g in gens])
        return (x[idx],), y[idx], False
    return draw


CASES = [("sgd", None, 0.0), ("sgd", None, 1e-3), ("adam", None, 0.0), ("adam", 0.0, 0.0), ("adam", 1e-3, 1e-2),
         ("adamw", 0.0, 0.1), ("adamw", None, 0.1), ("signsgd", None, 0.0), ("signsgd", None, 0.1),
         ("lion", None, 0.0), ("lion", None, 0.1), ("adafactor", None, 0.0), ("adafactor", 1e-3, 0.1),
         ("adafactor_unscaled", None, 0.0), ("adafactor_unscaled", 1e-3, 0.1)]


@pytest.mark.parametrize("optimizer,eps0,wd0", CASES)
def test_a_group_of_three_and_of_one_train_as_each_member_alone(tmp_path, optimizer, eps0, wd0):
    """Under a warm-up + cosine schedule: the stacked group of 3, the stacked group of 1 and the module path (the
    user's model with torch's optimizer from the plan's param groups) give the same losses — ε = 0 included (the
    group used to read ε = 0 as 1e-8)."""
    schedule = Schedule(12, "cosine", warmup=3, final=0.1)
    group = members(tmp_path, optimizer, eps0, wd0)
    if eps0 is not None and optimizer in ("adam", "adamw"):
        carried = [eps for _, (_, _, eps) in group[0].settings().items()]
        assert all(eps == 0.0 for eps in carried) if eps0 == 0 else all(eps and eps != 1e-8 for eps in carried)
    together = train(StackedReplicas(group), batches_for(3, [0, 1, 2]), schedule)
    for k in range(3):
        alone = members(tmp_path, optimizer, eps0, wd0)[k]
        one = train(StackedReplicas([alone]), batches_for(1, [k]), schedule)
        module = train(ModuleReplica(members(tmp_path, optimizer, eps0, wd0)[k]), batches_for(1, [k]), schedule)
        assert together.status(k) == one.status(0) == module.status(0) == "done"
        np.testing.assert_allclose(together.losses[k], module.losses[0], rtol=2e-5, atol=1e-6)
        np.testing.assert_allclose(one.losses[0], module.losses[0], rtol=2e-5, atol=1e-6)
        assert len(module.losses[0]) == 12


def test_a_diverging_member_stops_alone_and_in_a_group(tmp_path, monkeypatch):
    """A member whose loss explodes stops updating, is recorded diverged at the same step as alone, and the others
    finish untouched."""
    monkeypatch.setitem(LRS, "sgd", [0.05, 0.2, 1e5])
    schedule = Schedule(12)
    together = train(StackedReplicas(members(tmp_path, "sgd", None)), batches_for(3, [0, 1, 2]), schedule)
    assert [together.status(k) for k in range(3)] == ["done", "done", "diverged"]
    assert math.isinf(together.final_loss(2, 12)) and len(together.losses[0]) == 12
    alone = train(ModuleReplica(members(tmp_path, "sgd", None)[2]), batches_for(1, [2]), schedule)
    assert alone.status(0) == "diverged" and len(alone.losses[0]) == len(together.losses[2]) < 12
    np.testing.assert_allclose(alone.losses[0], together.losses[2], rtol=1e-4)


@pytest.mark.parametrize("kind", ["constant", "cosine", "linear"])
def test_schedules_are_their_formulas(kind):
    s = Schedule(110, kind, warmup=10, final=0.2)
    assert [s.factor(t) for t in range(3)] == pytest.approx([0.1, 0.2, 0.3])
    assert s.factor(9) == 1.0 and s.factor(10) == pytest.approx(1.0)
    p = 50 / 100
    expected = {"constant": 1.0, "cosine": 0.2 + 0.8 * 0.5 * (1 + math.cos(math.pi * p)), "linear": 0.2 + 0.8 * 0.5}
    assert s.factor(60) == pytest.approx(expected[kind])
    assert s.factor(109) == pytest.approx({"constant": 1.0, "cosine": 0.2 + 0.8 * 0.5 * (1 + math.cos(math.pi * 0.99)),
                                           "linear": 0.2 + 0.8 * 0.01}[kind])
    with pytest.raises(ValueError, match="unknown schedule"):
        Schedule(10, "step")


SWEEP = """
name = "sched"
specs = ["{spec}"]
model = "mupdsl.models.mlp"
dataset = "teacher"
optimizer = "{optimizer}"
widths = [32]
lrs = {lrs}
seeds = [0, 1]
steps = 16
batch_size = 16
num_samples = 400
warmup = 4
schedule = "cosine"
decay_to = 0.1
[measure]
sharpness_every = 5
eval_every = 8
batch_size = 32
"""


@pytest.mark.parametrize("optimizer,eps", [("sgd", None), ("adam", 1e-6), ("adafactor", 1e-3),
                                           ("adafactor_unscaled", 1e-3)])
def test_sweep_group_equals_alone_with_schedule_and_eps(tmp_path, optimizer, eps):
    """The sweep's trials in a group and alone: the same losses, sharpness (with Adafactor's ε₁-floor share) and
    HVP counts; the EoS line follows the learning rate in force (2/η_t for SGD and Adafactor, 38/η_t for Adam)."""
    base = "mup_adafactor" if optimizer == "adafactor" else "mup"
    spec = base
    if eps is not None:
        (tmp_path / "eps.param").write_text(f'spec eps_test\nextends {base}\nset eps0 = {eps}\n')
        spec = str(tmp_path / "eps.param")
    lrs = {"sgd": "[0.05, 0.2]", "adafactor": "[0.01, 0.05]"}.get(optimizer, "[0.001, 0.01]")
    path = tmp_path / "exp.toml"
    path.write_text(SWEEP.format(spec=spec, optimizer=optimizer, lrs=lrs))
    exp = load_experiment(path)
    data, cpu = experiment_data(exp), torch.device("cpu")
    trials = plan_trials(exp)
    schedule = Schedule(16, "cosine", 4, 0.1)
    for trial, (status, curves, _, _) in zip(trials, train_group(exp, trials, data, cpu)):
        s, c, _, _ = train_alone(exp, trial, data, cpu)
        assert status == s == "done"
        np.testing.assert_allclose(curves["loss"], c["loss"], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(curves["sharpness"], c["sharpness"], rtol=1e-3)
        np.testing.assert_array_equal(curves["hvps"], c["hvps"])
        if optimizer.startswith("adafactor"):
            np.testing.assert_allclose(curves["floor_share"], c["floor_share"], rtol=1e-3, atol=1e-6)
            assert np.isfinite(curves["floor_share"]).all()
        factor = np.array([schedule.factor(int(t)) for t in curves["sharp_step"]])
        threshold = 38.0 if optimizer == "adam" else 2.0
        np.testing.assert_allclose(curves["eos_line"], threshold / (trial["lr"] * factor), rtol=1e-9)
        assert len(set(np.round(curves["eos_line"], 9))) > 1      # the line moves with the schedule


def test_schedule_keys_are_checked_and_keep_old_ids(tmp_path):
    from mupdsl.sweep import ExperimentError

    path = tmp_path / "exp.toml"
    plain = SWEEP.format(spec="mup", optimizer="sgd", lrs="[0.1]").replace('schedule = "cosine"\ndecay_to = 0.1\n', "")
    path.write_text(plain)
    before = {t["id"] for t in plan_trials(load_experiment(path))}
    path.write_text(plain.replace("warmup = 4", 'warmup = 4\nschedule = "constant"'))
    assert {t["id"] for t in plan_trials(load_experiment(path))} == before   # the default leaves the ids alone
    path.write_text(plain.replace("warmup = 4", 'warmup = 4\nschedule = "linear"'))
    assert {t["id"] for t in plan_trials(load_experiment(path))}.isdisjoint(before)
    for bad, message in [('schedule = "step"', "schedule"), ("decay_to = 0.5", "decay_to"),
                         ("warmup = 40", "warmup")]:
        path.write_text(plain.replace("warmup = 4", bad))
        with pytest.raises(ExperimentError, match=message):
            load_experiment(path)


def test_json_curves_put_measurements_at_their_steps():
    from mupdsl.sweep.results import curve_table

    table = curve_table({"loss": np.ones(8), "sharp_step": np.array([1, 6]), "floor_share": np.array([0.1, 0.2]),
                         "eos_line": np.array([40.0, 20.0]), "eos": np.array([20.0])})
    assert table["floor_share"] == {"step": [1, 6], "value": [0.1, 0.2]}
    assert table["eos_line"]["step"] == [1, 6] and "eos" not in table and table["loss"]["step"] == list(range(8))


def test_trials_run_one_at_a_time_are_stored_as_each_finishes(tmp_path, monkeypatch):
    """With group = false (or an optimizer that cannot be stacked) each trial is in the store before the next one
    starts training: an interruption loses only the trial in flight."""
    import sqlite3

    from mupdsl.sweep import run, trial as trial_module

    path = tmp_path / "exp.toml"
    path.write_text(SWEEP.format(spec="mup", optimizer="sgd", lrs="[0.05, 0.1, 0.2]").replace("seeds = [0, 1]",
                                                                                            "seeds = [0]\ngroup = false"))
    stored_at_start = []
    original = trial_module.train_trials

    def counting(*args, **kwargs):
        con = sqlite3.connect(tmp_path / "out" / "index.sqlite")
        stored_at_start.append(con.execute("SELECT COUNT(*) FROM trials").fetchone()[0])
        con.close()
        return original(*args, **kwargs)

    monkeypatch.setattr(trial_module, "train_trials", counting)
    run(load_experiment(path), tmp_path / "out", say=lambda _: None, gated=False)
    assert stored_at_start == [0, 1, 2]
