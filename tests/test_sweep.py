"""The sweep: experiment errors, η* analysis on known curves, resume after SIGKILL, diverged and crashed trials,
the report with its figures."""

import json
import math
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mupdsl.sweep import ExperimentError, load_experiment, plan_trials, run, write_report
from mupdsl.sweep.analysis import eta_star, transfer

from helpers import TINY


def write(tmp_path, text, name="exp.toml"):
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.mark.parametrize("text,key,line", [
    ('name = "x"\nspecs = ["mup"]\nmodel = "m"\nwidths = [16, -3]\nlrs = [0.1]\n', "widths", 4),
    ('name = "x"\nspecs = ["mup"]\nmodel = "m"\nwidths = [16]\nlrs = [0.1]\nstepz = 3\n', "stepz", 6),
    ('name = "x"\nspecs = ["mup"]\nmodel = "m"\nwidths = [16]\n', "lrs", 1),
    ('name = "x"\nspecs = ["mup"]\nmodel = "m"\nwidths = [16]\nlrs = [0.1]\n[measure]\ntop_k = 0\n', "measure.top_k", 7),
    ('name = "x"\nspecs = ["mup"\n', "syntax", 2),
])
def test_experiment_errors_name_file_key_and_line(tmp_path, text, key, line):
    with pytest.raises(ExperimentError) as info:
        load_experiment(write(tmp_path, text))
    assert info.value.key == key and info.value.line == line, info.value.render()
    assert info.value.render().startswith(f"{tmp_path / 'exp.toml'}:{line}: error: {key}")


def test_eta_star_on_known_curves():
    lrs = [2.0 ** k for k in range(-8, 1)]
    for true in (2.0 ** -5.3, 2.0 ** -2.5):
        losses = [(math.log(lr) - math.log(true)) ** 2 + 1 for lr in lrs]
        assert eta_star(lrs, losses) == pytest.approx(true, rel=1e-9)   # exact for a parabola in log η
    losses = [1.0] * 8 + [math.inf]
    assert min(abs(eta_star(lrs, losses) - lr) for lr in lrs) < 1e-12   # a grid point when flat
    # A flat bottom with trial noise: the lowest grid point is one step off the true optimum (2^-4); the
    # five-point fit lands within 0.2 grid steps of it (-3.82), the three-point fit 0.53 steps off (-3.47).
    noise = [0.0, 0.0, 0.0, 0.01, 0.01, -0.012, 0.0, 0.0, 0.0]
    losses = [0.02 * (math.log2(lr) + 4) ** 2 + 1 + e for lr, e in zip(lrs, noise)]
    assert abs(math.log2(eta_star(lrs, losses)) + 4) < 0.2
    trials = [{"spec": "a", "width": w, "lr": lr, "status": "done", "seed": 0,
               "final_loss": (math.log(lr) - math.log(2.0 ** -4 if s == "a" else 2.0 ** -7 * (w / 16) ** 0.5)) ** 2}
              for s in ("a", "b") for w in (16, 64, 256) for lr in lrs]
    for t in trials[len(trials) // 2:]:
        t["spec"] = "b"
    result = transfer(trials)
    assert result["a"]["shift"] == pytest.approx(0.0, abs=1e-9) and result["a"]["transfer"] == "PASS"
    assert result["b"]["shift"] == pytest.approx(2.0, rel=1e-6) and result["b"]["transfer"] == "FAIL"


def test_run_resume_diverged_and_report(tmp_path):
    exp = load_experiment(write(tmp_path, TINY.replace("[0.05, 0.2, 0.8]", "[0.05, 0.2, 500.0]")))
    out = tmp_path / "out"
    lines = []
    summary = run(exp, out, say=lines.append)
    assert summary.trials == 12 and summary.ran == 12 and summary.diverged >= 1
    again = run(exp, out, say=lines.append)
    assert again.ran == 0 and again.skipped == 12
    report, analysis = write_report(out)
    text = report.read_text()
    assert "| mup | PASS" in text and "fig_mup.png" in text
    assert (out / "fig_mup.png").stat().st_size > 10_000 and (out / "fig_sp.png").exists()
    assert set(analysis) == {"mup", "sp"}


def test_crashed_trial_is_recorded_and_the_sweep_goes_on(tmp_path):
    model = tmp_path / "fragile.py"
    model.write_text("from mupdsl.models.mlp import MLP, example_batch\n"
                     "def build(width: int, depth: int = 1):\n"
                     "    if width == 48:\n        raise RuntimeError('no kernel for 48')\n"
                     "    return MLP(width, depth)\n")
    text = TINY.replace('"mupdsl.models.mlp"', f'"{model}"').replace("[16, 32]", "[16, 48]").replace(
        'specs = ["mup", "sp"]\nungated = ["sp"]', 'specs = ["sp"]\nungated = ["sp"]')
    exp = load_experiment(write(tmp_path, text))
    summary = run(exp, tmp_path / "out", say=lambda _: None)
    assert summary.crashed == 3 and summary.ran == 6
    con = sqlite3.connect(tmp_path / "out" / "index.sqlite")
    errors = [row[0] for row in con.execute("SELECT error FROM trials WHERE status = 'crashed'")]
    assert len(errors) == 3 and all("no kernel for 48" in e for e in errors)


def test_sigkill_mid_sweep_then_resume(tmp_path):
    exp_path = write(tmp_path, TINY.replace("steps = 15", "steps = 60").replace("[0.05, 0.2, 0.8]",
                                                                              "[0.02, 0.05, 0.1, 0.2, 0.4, 0.8]"))
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "mupdsl.cli", "sweep", str(exp_path), "--out", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    db = out / "index.sqlite"
    deadline = time.time() + 240
    done_before = []
    while time.time() < deadline:
        if db.exists():
            try:
                done_before = [r for r in sqlite3.connect(db).execute("SELECT id, seconds FROM trials")]
            except sqlite3.OperationalError:
                pass  # the sweep has not created its tables yet
        if len(done_before) >= 3:
            break
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert 3 <= len(done_before) < 24
    done_before = dict(sqlite3.connect(db).execute("SELECT id, seconds FROM trials").fetchall())
    result = subprocess.run(cmd + ["--json"], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["trials"] == 24 and doc["skipped"] == len(done_before) and doc["ran"] == 24 - len(done_before)
    after = dict(sqlite3.connect(db).execute("SELECT id, seconds FROM trials").fetchall())
    assert len(after) == 24
    assert all(after[k] == v for k, v in done_before.items())   # finished trials kept, not re-run
    assert {t["id"] for t in plan_trials(load_experiment(exp_path))} == set(after)


def test_gate_stops_the_sweep(tmp_path):
    from click.testing import CliRunner

    from mupdsl.cli import main
    exp = write(tmp_path, TINY.replace('ungated = ["sp"]', "ungated = []"))
    result = CliRunner().invoke(main, ["sweep", str(exp), "--out", str(tmp_path / "out")])
    assert result.exit_code == 1 and "stopped before any trial" in result.output
    con = sqlite3.connect(tmp_path / "out" / "index.sqlite")
    assert con.execute("SELECT COUNT(*) FROM trials").fetchone()[0] == 0


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_grouped_equals_one_at_a_time(tmp_path, monkeypatch, optimizer):
    """Losses over 20 steps and every measurement (sharpness, trace, directional, NTK) of a vmapped group equal
    the one-at-a-time trials; the group's sharpness comes from the batched Lanczos, not a per-member fallback."""
    import numpy as np
    import torch

    from mupdsl.sweep import measuring
    from mupdsl.sweep.trial import experiment_data, train_alone, train_group

    def no_fallback(*args, **kwargs):
        raise AssertionError("the group measured member by member")

    monkeypatch.setattr(measuring, "measure", no_fallback)
    text = TINY.replace("steps = 15", "steps = 20").replace('optimizer = "sgd"', "")
    text = text.replace("batch_size = 32\n", "batch_size = 32\ntrace_samples = 4\ndirectional = true\nntk = true\n")
    text = text.replace('dataset = "teacher"', f'dataset = "teacher"\noptimizer = "{optimizer}"\nseeds = [0, 1]')
    if optimizer == "adam":
        text = text.replace("[0.05, 0.2, 0.8]", "[0.001, 0.01, 0.05]")
    exp = load_experiment(write(tmp_path, text))
    data = experiment_data(exp)
    group = [t for t in plan_trials(exp) if t["spec"] == "mup" and t["width"] == 32]
    assert len(group) == 6
    grouped = train_group(exp, group, data, torch.device("cpu"))
    for trial, (status, curves, final, _) in zip(group, grouped):
        s, c, f, _ = train_alone(exp, trial, data, torch.device("cpu"))
        assert status == s
        np.testing.assert_allclose(curves["loss"], c["loss"], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(curves["sharpness"], c["sharpness"], rtol=1e-3)
        assert len(curves["sharpness"]) == (4 if optimizer == "sgd" else 3)
        for key in ("trace", "trace_stderr", "directional", "ntk"):
            np.testing.assert_allclose(curves[key], c[key], rtol=1e-3, err_msg=key)
        np.testing.assert_array_equal(curves["hvps"], c["hvps"])


@pytest.mark.parametrize("runner", ["gamma_eta_phase", "consistency_widths", "linear_theory",
                                    pytest.param("super_consistency_fig1", marks=pytest.mark.slow)])
def test_paper_runners_run_small(tmp_path, runner):
    from mupdsl.sweep.experiment import small

    root = Path(__file__).resolve().parent.parent / "runners"
    overrides = {}
    if runner == "super_consistency_fig1":
        from test_data import write_cifar
        write_cifar(tmp_path / "cifar", per_batch=40)
        overrides.update(data_root=str(tmp_path / "cifar"), data_verify=False)
    exp = small(load_experiment(root / f"{runner}.toml", overrides))
    exp = exp.model_copy(update={"steps": 8})
    summary = run(exp, tmp_path / "out", say=lambda _: None)
    assert summary.crashed == 0 and summary.ran == summary.trials > 0
    report, analysis = write_report(tmp_path / "out")
    text = report.read_text()
    if runner == "gamma_eta_phase":
        assert "phase portrait" in text and (tmp_path / "out" / "phase_richness.png").exists()
    if runner == "consistency_widths":
        assert "Consistency of the sharpness" in text


def test_missing_cifar_is_bad_input(tmp_path):
    from click.testing import CliRunner

    from mupdsl.cli import main
    exp = Path(__file__).resolve().parent.parent / "runners" / "super_consistency_fig1.toml"
    result = CliRunner().invoke(main, ["sweep", str(exp), "--small", "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "CIFAR-10 not found in data" in result.output


def test_adaptive_grid_searches_down_from_the_largest_rate(tmp_path):
    text = TINY.replace("lrs = [0.05, 0.2, 0.8]", "lrs = { start = 4096.0, factor = 4.0, below = 2, floor = 0.01 }")
    text = text.replace('specs = ["mup", "sp"]\nungated = ["sp"]', 'specs = ["sp"]\nungated = ["sp"]')
    text = text.replace("widths = [16, 32]", "widths = [16]")
    exp = load_experiment(write(tmp_path, text))
    summary = run(exp, tmp_path / "out", say=lambda _: None)
    con = sqlite3.connect(tmp_path / "out" / "index.sqlite")
    rows = sorted(con.execute("SELECT lr, status FROM trials").fetchall(), reverse=True)
    lrs = [lr for lr, _ in rows]
    assert lrs == sorted(lrs, reverse=True) and lrs[0] == 4096.0
    assert summary.ran == len(rows) < len(exp.lr_values())      # stopped: first convergent rate + 2 below it
    assert rows[-1][0] > 0.01
    again = run(exp, tmp_path / "out", say=lambda _: None)
    assert again.ran == 0


def test_slurm_engine_shards_and_merges_through_submitits_local_executor(tmp_path):
    pytest.importorskip("submitit")
    exp = load_experiment(write(tmp_path, TINY))
    out = tmp_path / "out"
    summary = run(exp, out, engine="slurm", engine_options={"tasks": 2, "cluster": "local"}, say=lambda _: None)
    assert summary.trials == 12 and summary.ran == 12 and summary.crashed == 0
    con = sqlite3.connect(out / "index.sqlite")
    assert con.execute("SELECT COUNT(*) FROM trials").fetchone()[0] == 12
    assert not (out / "shards").exists()
    local = tmp_path / "local"
    run(exp, local, say=lambda _: None)
    a = dict(con.execute("SELECT id, final_loss FROM trials").fetchall())
    b = dict(sqlite3.connect(local / "index.sqlite").execute("SELECT id, final_loss FROM trials").fetchall())
    assert a.keys() == b.keys() and all(a[k] == pytest.approx(b[k], rel=1e-6) for k in a)
    report, _ = write_report(out)
    assert "fig_mup.png" in report.read_text()


def test_ray_engine_on_a_local_cluster(tmp_path):
    """Every group a Ray task on a local cluster (2 CPUs): the store equals the local engine's; resuming runs
    nothing; a task that fails records its trials as crashed and the sweep finishes."""
    ray = pytest.importorskip("ray")
    exp = load_experiment(write(tmp_path, TINY))
    out = tmp_path / "out"
    ray.init(num_cpus=2, log_to_driver=False, include_dashboard=False)
    try:
        summary = run(exp, out, engine="ray", say=lambda _: None)
        assert summary.trials == 12 and summary.ran == 12 and summary.crashed == 0
        assert run(exp, out, engine="ray", say=lambda _: None).ran == 0
        local = tmp_path / "local"
        run(exp, local, say=lambda _: None)
        a = dict(sqlite3.connect(out / "index.sqlite").execute("SELECT id, final_loss FROM trials").fetchall())
        b = dict(sqlite3.connect(local / "index.sqlite").execute("SELECT id, final_loss FROM trials").fetchall())
        assert a.keys() == b.keys() and all(a[k] == pytest.approx(b[k], rel=1e-6) for k in a)
        broken = exp.model_copy(update={"model": str(tmp_path / "missing_on_workers.py")})
        from mupdsl.sweep.engines import run_ray
        from mupdsl.sweep.store import Store

        store = Store(tmp_path / "broken")
        groups = [[dict(t, model=broken.model) for t in plan_trials(exp)[:2]]]
        assert run_ray(broken, groups, store, say=lambda _: None) == 2
        assert {t["status"] for t in store.trials()} == {"crashed"}
        store.close()
    finally:
        ray.shutdown()


def test_text_dataset_trains_a_gpt_grouped_and_alone(tmp_path):
    """dataset = "text": character windows from a local file feed the GPT model (integer inputs, per-token
    targets); a group reproduces its trials run alone; a missing file is a clear error naming it."""
    import numpy as np
    import torch

    from mupdsl.data import DataMissing
    from mupdsl.sweep.trial import experiment_data, train_alone, train_group

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("the quick brown fox jumps over the lazy dog. " * 40)
    text = TINY.replace('dataset = "teacher"', f'dataset = "text"\ntext_file = "{corpus}"\ncontext = 8')
    text = text.replace('model = "mupdsl.models.mlp"', 'model = "mupdsl.models.gpt"').replace("[16, 32]", "[16]")
    exp = load_experiment(write(tmp_path, text.replace("steps = 15", "steps = 6")))
    data = experiment_data(exp)
    assert data[0].dtype == torch.long and data[0].shape[1] == 8 and data[1].shape == data[0].shape
    group = [t for t in plan_trials(exp) if t["spec"] == "mup"]
    for trial, (status, curves, _, _) in zip(group, train_group(exp, group, data, torch.device("cpu"))):
        s, c, _, _ = train_alone(exp, trial, data, torch.device("cpu"))
        assert status == s
        np.testing.assert_allclose(curves["loss"], c["loss"], rtol=1e-5, atol=1e-5)
    missing = load_experiment(write(tmp_path, text.replace(str(corpus), str(tmp_path / "nope.txt")), "m.toml"))
    with pytest.raises(DataMissing, match="nope.txt"):
        experiment_data(missing)


def test_depth_sweep_compares_across_depth(tmp_path):
    text = TINY.replace("widths = [16, 32]", "widths = [16]\ndepths = [1, 3]")
    exp = load_experiment(write(tmp_path, text))
    assert exp.size == "depth"
    trials = plan_trials(exp)
    assert sorted({t["depth"] for t in trials}) == [1, 3] and {t["base_depth"] for t in trials} == {1}
    run(exp, tmp_path / "out", say=lambda _: None)
    report, analysis = write_report(tmp_path / "out")
    assert set(analysis["mup"]["eta_star"]) == {1, 3}
    assert "η* per depth" in report.read_text()


def test_threads_are_pinned_for_the_run_and_restored():
    import os

    import torch

    from mupdsl.sweep.trial import pinned_threads

    before = torch.get_num_threads()
    with pinned_threads(1) as n:
        assert n == torch.get_num_threads() == 1
    with pinned_threads(None) as n:
        assert n == torch.get_num_threads() == len(os.sched_getaffinity(0))
    assert torch.get_num_threads() == before
