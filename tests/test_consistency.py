"""Seed 004's consistency across widths: the distances computed from the probe records against hand-made curves;
the probe records of a vmapped group equal those of its trials alone; and (slow) the CPU reproduction — µP's
distances shrink with width, NTP's logits do not."""

import numpy as np
import pytest
import torch

from mupdsl.sweep import load_experiment, plan_trials, run, sweep_document
from mupdsl.sweep.consistency import width_consistency
from mupdsl.sweep.trial import experiment_data, train_alone, train_group


def trial(width, seed, tid):
    return {"id": tid, "spec": "s", "lr": 0.1, "status": "done", "width": width, "seed": seed}


def test_distances_and_ensembles_against_hand_computed_values():
    rng = np.random.default_rng(0)
    targets = rng.integers(0, 3, size=5).astype(float)
    wide = rng.normal(size=(5, 3))
    narrow = [wide + 0.5 * rng.normal(size=(5, 3)) for _ in range(2)]
    kernel_wide = np.eye(5) + 0.1
    kernel_narrow = np.eye(5) * 2 + 0.1
    curves = {}
    trials = []
    for seed in (0, 1):
        curves[f"w{seed}"] = {"eval_step": np.array([10, 20]), "eval_loss": np.array([1.0, 0.5]),
                              "probe_logits": np.stack([wide, wide]), "probe_kernel": np.stack([kernel_wide] * 2),
                              "probe_targets": targets}
        curves[f"n{seed}"] = {"eval_step": np.array([10, 20]), "eval_loss": np.array([1.2, 0.9]),
                              "probe_logits": np.stack([narrow[seed], narrow[seed]]),
                              "probe_kernel": np.stack([kernel_narrow] * 2), "probe_targets": targets}
        trials += [trial(64, seed, f"n{seed}"), trial(256, seed, f"w{seed}")]
    found = width_consistency(trials, curves.__getitem__, {"s": 0.1})["s"]
    d = found["distance"][64]
    assert d["loss"] == pytest.approx(0.3)                       # mean(|1.2 − 1.0|, |0.9 − 0.5|)
    expected = np.mean([np.linalg.norm(n - wide) / np.linalg.norm(wide) for n in narrow])
    assert d["logits"] == pytest.approx(expected)
    unit = lambda k: k / np.linalg.norm(k)  # noqa: E731
    assert d["kernel"] == pytest.approx(np.linalg.norm(unit(kernel_narrow) - unit(kernel_wide)))

    def ce(z):
        z = z - z.max(1, keepdims=True)
        return float(-(z - np.log(np.exp(z).sum(1, keepdims=True)))[np.arange(5), targets.astype(int)].mean())
    e = found["ensemble"]["by_size"]
    assert e[64]["ensemble"] == pytest.approx(ce((narrow[0] + narrow[1]) / 2))
    assert e[64]["single"] == pytest.approx((ce(narrow[0]) + ce(narrow[1])) / 2)
    assert e[256]["single"] == pytest.approx(ce(wide))


TINY = """
name = "probe"
specs = ["mup"]
model = "mupdsl.models.mlp"
dataset = "mnist1d"
widths = [{widths}]
lrs = [0.1, 0.2]
seeds = [0, 1]
steps = {steps}
batch_size = 32
num_samples = {samples}
threads = 1
[measure]
eval_every = {every}
probe = 64
"""


def test_probe_records_of_a_group_equal_its_trials_alone(tmp_path):
    path = tmp_path / "exp.toml"
    path.write_text(TINY.format(widths="32", steps=12, samples=400, every=6))
    exp = load_experiment(path)
    data, cpu = experiment_data(exp), torch.device("cpu")
    trials = plan_trials(exp)
    for t, (status, curves, _, _) in zip(trials, train_group(exp, trials, data, cpu)):
        _, alone, _, _ = train_alone(exp, t, data, cpu)
        assert curves["probe_logits"].shape == (2, 64, 10) and curves["probe_kernel"].shape == (2, 64, 64)
        np.testing.assert_allclose(curves["probe_logits"], alone["probe_logits"], rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(curves["probe_kernel"], alone["probe_kernel"], rtol=1e-4, atol=1e-6)
        assert np.allclose(curves["probe_kernel"][-1], curves["probe_kernel"][-1].T)


@pytest.mark.slow
def test_s5_mup_is_consistent_across_widths_and_ntp_is_not(tmp_path):
    """runners/consistency_widths_cpu.toml in small: widths 64–512, 2 seeds, 200 steps at η = 0.2."""
    path = tmp_path / "exp.toml"
    path.write_text(TINY.format(widths="64, 128, 256, 512", steps=200, samples=4000, every=50)
                    .replace('specs = ["mup"]', 'specs = ["mup", "ntp"]\nungated = ["ntp"]')
                    .replace("lrs = [0.1, 0.2]", "lrs = [0.2]").replace("probe = 64", "probe = 256"))
    run(load_experiment(path), tmp_path / "out", say=lambda _: None)
    doc = sweep_document(tmp_path / "out")
    mup, ntp = doc["specs"]["mup"]["consistency"], doc["specs"]["ntp"]["consistency"]
    for metric in ("loss", "logits", "kernel"):
        assert mup["slope"][metric] < -0.2, (metric, mup)
    distance = mup["distance"]
    assert distance["64"]["logits"] > 1.5 * distance["256"]["logits"]
    assert ntp["slope"]["logits"] > mup["slope"]["logits"] + 0.3, (ntp, mup)
    assert min(d["logits"] for d in ntp["distance"].values()) > 2 * max(d["logits"] for d in distance.values())
