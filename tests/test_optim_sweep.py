"""Sweeps with the optimizer families beyond Adam: SignSGD and Lion train in vmapped groups that reproduce the
one-at-a-time trials; Adafactor and Muon are refused by the stacked optimizer and run one at a time, with a notice;
an experiment that asks for the preconditioned sharpness under them is a located error."""

import numpy as np
import pytest
import torch

from mupdsl.compile.stacked import FlatStack, NotStackable, StackedOptimizer
from mupdsl.sweep import ExperimentError, load_experiment, plan_trials, run
from mupdsl.sweep.trial import compile_member, train_group
from mupdsl.sweep.trial import train_alone

TINY = """
name = "tiny"
specs = ["mup"]
model = "mupdsl.models.mlp"
dataset = "teacher"
optimizer = "{optimizer}"
widths = [32]
lrs = [0.001, 0.01]
seeds = [0, 1]
steps = 20
batch_size = 16
num_samples = 400
[measure]
eval_every = 5
"""

SPECS = {"signsgd": "mup", "lion": "mup", "adafactor": "mup_adafactor", "muon": "mup_muon"}


def experiment(tmp_path, optimizer, extra=""):
    path = tmp_path / f"{optimizer}.toml"
    path.write_text(TINY.replace("{optimizer}", optimizer).replace('"mup"', f'"{SPECS[optimizer]}"') + extra)
    return load_experiment(path)


@pytest.mark.parametrize("optimizer", ["signsgd", "lion"])
def test_grouped_equals_one_at_a_time(tmp_path, optimizer):
    from mupdsl.sweep.trial import experiment_data

    exp = experiment(tmp_path, optimizer)
    data = experiment_data(exp)
    trials = plan_trials(exp)
    assert len(trials) == 4
    cpu = torch.device("cpu")
    for trial, (status, curves, final, final_eval) in zip(trials, train_group(exp, trials, data, cpu)):
        s, c, f, e = train_alone(exp, trial, data, cpu)
        assert status == s == "done"
        np.testing.assert_allclose(curves["loss"], c["loss"], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(curves["eval_loss"], c["eval_loss"], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("optimizer", ["adafactor", "muon"])
def test_the_stacked_optimizer_refuses_families_that_are_not_elementwise(tmp_path, optimizer):
    exp = experiment(tmp_path, optimizer)
    members = [compile_member(exp, t) for t in plan_trials(exp)[:2]]
    with pytest.raises(NotStackable, match=f"optimizer {optimizer} is not elementwise"):
        StackedOptimizer(FlatStack.of(members[0]), members, torch.zeros(2, 1))


@pytest.mark.slow
@pytest.mark.parametrize("optimizer", ["adafactor", "muon"])
def test_unstackable_families_run_one_at_a_time_with_a_notice(tmp_path, optimizer):
    exp = experiment(tmp_path, optimizer)
    said = []
    summary = run(exp, tmp_path / "out", gated=False, say=said.append)
    assert summary.ran == 4 and summary.crashed == 0 and summary.diverged == 0
    notices = [line for line in said if line.startswith("notice:")]
    assert len(notices) == 1 and "NotStackable" in notices[0] and "one at a time" in notices[0]


@pytest.mark.parametrize("optimizer", ["signsgd", "lion", "adafactor", "muon"])
def test_sharpness_under_a_family_without_a_preconditioner_is_a_located_error(tmp_path, optimizer):
    with pytest.raises(ExperimentError) as info:
        experiment(tmp_path, optimizer, extra="sharpness_every = 5\n")
    assert info.value.key == "measure" and info.value.line == TINY.splitlines().index("[measure]") + 1
    assert f"optimizer {optimizer} has no preconditioned sharpness" in info.value.message
