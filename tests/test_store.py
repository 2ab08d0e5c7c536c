"""The result store and its folder: trial ids and gate verdicts keyed by content, the schema version, the report
showing only the experiment as it is now, figures of a user's own spec file, and faults — `--fresh` deleting only
the sweep's own files, a corrupted index or experiment record, missing or garbled curves, two sweeps into one
folder, another experiment into it, an engine that cannot run an adaptive grid. Stores are pre-filled, so almost
nothing trains."""

import json
import math
import sqlite3
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from mupdsl.cli import main
from mupdsl.sweep import load_experiment, plan_trials, run, sweep_document, write_report
from mupdsl.sweep.engines import EngineRefused
from mupdsl.sweep.keys import gate_keys
from mupdsl.sweep.store import SCHEMA_VERSION, Store, StoreError
from mupdsl.sweep.workdir import FolderInUse, clear, folder_lock

from helpers import TINY


def experiment(tmp_path, text=TINY, name="exp.toml"):
    path = tmp_path / name
    path.write_text(text)
    return path, load_experiment(path)


def prefill(out, exp, trials=None, record=True):
    """``trials`` (default: every planned trial of ``exp``) stored as finished with a parabola in log η, both
    gates passed under their content keys, and the experiment recorded: a sweep over ``out`` trains nothing."""
    out.mkdir(parents=True, exist_ok=True)
    if record:
        (out / "experiment.json").write_text(exp.model_dump_json(indent=1))
    store = Store(out)
    for spec, key in gate_keys(exp).items():
        store.record_gate(key, spec, "PASS", "")
    for t in plan_trials(exp) if trials is None else trials:
        loss = (math.log(t["lr"]) - math.log(0.2)) ** 2 + 0.1
        curves = {"loss": np.full(exp.steps, loss), "sharp_step": np.array([0.0, 5.0, 10.0]),
                  "sharpness": np.array([1.0, 2.0, 3.0]), "eos": np.array([2.0 / t["lr"]])}
        store.record(t, "done", curves, final_loss=loss, final_eval=loss, error=None, seconds=0.0)
    store.close()


def user_spec(folder, extra=""):
    """A user's own spec file extending a local parent (which extends the µP preset)."""
    folder.mkdir(exist_ok=True)
    (folder / "parent.param").write_text("spec parent\nextends mup\n")
    (folder / "mine.param").write_text('spec mine\nextends "parent.param"\n' + extra)
    return folder / "mine.param"


# -- content keys -----------------------------------------------------------------------------------------------

def test_trial_ids_follow_the_content_of_spec_model_data_and_settings(tmp_path):
    spec = user_spec(tmp_path / "specs")
    model = tmp_path / "net.py"
    model.write_text("from mupdsl.models.mlp import MLP, example_batch\n"
                     "def build(width: int, depth: int = 1):\n    return MLP(width, depth)\n")
    text = TINY.replace('"mupdsl.models.mlp"', f'"{model}"').replace(
        'specs = ["mup", "sp"]\nungated = ["sp"]', f'specs = ["{spec}"]')
    path, exp = experiment(tmp_path, text)

    def ids(e=None):
        return [t["id"] for t in plan_trials(e or load_experiment(path))]

    before = ids()
    assert len(set(before)) == len(before) == 6
    (tmp_path / "specs" / "mine.param").write_text('spec mine\nextends "parent.param"\n# edited\n')
    after_spec = ids()
    assert set(after_spec).isdisjoint(before)                     # the spec's own text
    (tmp_path / "specs" / "parent.param").write_text("spec parent\nextends mup\n# edited\n")
    after_parent = ids()
    assert set(after_parent).isdisjoint(after_spec)               # a file it extends
    model.write_text(model.read_text() + "# edited\n")
    after_model = ids()
    assert set(after_model).isdisjoint(after_parent)              # the model's source
    for key, value in [("loss", "mse"), ("full_batch", True), ("num_samples", 800), ("steps", 16)]:
        assert set(ids(exp.model_copy(update={key: value}))).isdisjoint(after_model), key
    for key, value in [("name", "renamed"), ("device", "cpu"), ("threads", 1), ("group", False),
                       ("ungated", [str(spec)]), ("context", 32)]:     # context is the text dataset's only
        assert ids(exp.model_copy(update={key: value})) == after_model, key
    wider = exp.model_copy(update={"widths": [16, 32, 64]})
    assert set(after_model) <= set(ids(wider))                    # a wider grid keeps the trials already run


def test_text_dataset_ids_follow_the_text_and_context(tmp_path):
    text_file = tmp_path / "input.txt"
    text_file.write_text("hello world " * 50)
    path, exp = experiment(tmp_path, TINY.replace('dataset = "teacher"',
                                                  f'dataset = "text"\ntext_file = "{text_file}"'))
    first = {t["id"] for t in plan_trials(exp)}
    assert {t["id"] for t in plan_trials(exp.model_copy(update={"context": 8}))}.isdisjoint(first)
    text_file.write_text("another text " * 50)
    assert {t["id"] for t in plan_trials(exp)}.isdisjoint(first)


def test_gate_verdict_is_keyed_by_content(tmp_path):
    spec = user_spec(tmp_path / "specs")
    path, exp = experiment(tmp_path, TINY.replace('specs = ["mup", "sp"]\nungated = ["sp"]', f'specs = ["{spec}"]'))
    out = tmp_path / "out"
    prefill(out, exp, trials=[])
    store = Store(out)
    assert store.gate(gate_keys(exp)[str(spec)]) == ("PASS", "")
    spec.write_text(spec.read_text() + "output { mult = 1 }\n")
    assert store.gate(gate_keys(exp)[str(spec)]) is None          # an edited spec is checked again
    assert store.gate(gate_keys(exp.model_copy(update={"coordcheck_widths": [32, 64]}))[str(spec)]) is None
    store.close()


# -- schema version ---------------------------------------------------------------------------------------------

def test_store_records_its_versions_and_refuses_another_schema(tmp_path):
    store = Store(tmp_path / "a")
    meta = store.meta()
    store.close()
    assert meta["schema"] == str(SCHEMA_VERSION) and meta["mupdsl"]
    con = sqlite3.connect(tmp_path / "a" / "index.sqlite")
    con.execute("UPDATE meta SET value = '99' WHERE key = 'schema'")
    con.commit()
    con.close()
    with pytest.raises(StoreError, match="schema 99.*--fresh"):
        Store(tmp_path / "a")
    (tmp_path / "old").mkdir()                                    # a store written before versions were recorded
    con = sqlite3.connect(tmp_path / "old" / "index.sqlite")
    con.executescript("CREATE TABLE trials (id TEXT PRIMARY KEY, spec TEXT);"
                      "CREATE TABLE gates (spec TEXT PRIMARY KEY, verdict TEXT, detail TEXT);")
    con.close()
    result = CliRunner().invoke(main, ["report", str(tmp_path / "old")])
    assert result.exit_code == 2 and "schema 1" in result.output and "Traceback" not in result.output


# -- the report shows the experiment as it is now ---------------------------------------------------------------

def test_report_shows_only_the_current_trials_and_counts_the_stale_ones(tmp_path):
    spec = user_spec(tmp_path / "specs")
    path, exp = experiment(tmp_path, TINY.replace('specs = ["mup", "sp"]\nungated = ["sp"]',
                                                  f'specs = ["{spec}", "sp"]\nungated = ["sp"]'))
    out = tmp_path / "out"
    prefill(out, exp)                                             # 12 trials of the experiment as first run
    spec.write_text(spec.read_text() + "# edited: its 6 trials are stale\n")
    current = [t for t in plan_trials(exp) if t["spec"] == str(spec)]
    prefill(out, exp, trials=current)                             # the edited spec's trials, run again
    result = CliRunner().invoke(main, ["report", str(out), "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["trials"] == 12 and doc["stale"] == 6
    assert {t["id"] for t in doc["specs"][str(spec)]["trials"]} == {t["id"] for t in current}
    assert "6 stale trials left aside" in (out / "report.md").read_text()
    text = CliRunner().invoke(main, ["report", str(out)])
    assert "6 stale trials left aside" in text.output


def test_a_user_spec_file_gets_figures_named_by_a_safe_slug(tmp_path):
    spec = user_spec(tmp_path / "my specs")
    path, exp = experiment(tmp_path, TINY.replace('specs = ["mup", "sp"]\nungated = ["sp"]', f'specs = ["{spec}"]'))
    out = tmp_path / "out"
    prefill(out, exp)
    report, analysis = write_report(out)
    figures = sorted(p.name for p in out.glob("fig_*.png"))
    assert len(figures) == 1 and figures[0].startswith("fig_mine-") and str(spec) in analysis
    assert f"]({figures[0]})" in report.read_text()


# -- faults ------------------------------------------------------------------------------------------------------

def test_fresh_deletes_only_the_sweeps_own_files_and_only_after_validation(tmp_path):
    path, exp = experiment(tmp_path)
    out = tmp_path / "out"
    prefill(out, exp)
    write_report(out)
    mine = [out / "notes.txt", out / "figure_of_mine.png", out / "curves" / "keep.npz", out / "sub" / "data.csv"]
    for p in mine:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text("the user's")
    ours = sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file() and p not in mine)
    bad = tmp_path / "bad.toml"
    bad.write_text(TINY.replace('"mupdsl.models.mlp"', '"missing_model.py"'))
    result = CliRunner().invoke(main, ["sweep", str(bad), "--fresh", "--out", str(out)])
    assert result.exit_code == 2 and "missing_model.py" in result.output
    assert sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file() and p not in mine) == ours
    deleted = clear(out)
    assert {p.relative_to(out) for p in deleted} == set(ours) and len(ours) > 12
    assert all(p.read_text() == "the user's" for p in mine)
    assert sorted(p for p in out.rglob("*") if p.is_file()) == sorted(mine)


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_a_corrupted_index_is_a_clear_error(tmp_path, damage):
    path, exp = experiment(tmp_path)
    out = tmp_path / "out"
    prefill(out, exp)
    index = out / "index.sqlite"
    data = index.read_bytes()
    index.write_bytes(b"\x13not a database at all" * 200 if damage == "garbage" else data[: len(data) // 2])
    for args in (["report", str(out)], ["sweep", str(path), "--out", str(out)]):
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 2, result.output
        assert str(index) in result.output and "--fresh" in result.output and "Traceback" not in result.output


def test_a_garbled_experiment_record_is_a_clear_error(tmp_path):
    path, exp = experiment(tmp_path)
    out = tmp_path / "out"
    prefill(out, exp)
    (out / "experiment.json").write_text('{"name": "tiny", "specs": [')
    for args in (["report", str(out), "--json"], ["sweep", str(path), "--out", str(out)]):
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 2, result.output
        assert "experiment.json: garbled" in result.output and "Traceback" not in result.output


def test_missing_and_garbled_curves_are_reported_and_run_again(tmp_path):
    path, exp = experiment(tmp_path, TINY.replace('specs = ["mup", "sp"]\nungated = ["sp"]',
                                                  'specs = ["sp"]\nungated = ["sp"]'))
    out = tmp_path / "out"
    prefill(out, exp)
    lost, garbled = plan_trials(exp)[:2]
    (out / "curves" / f"{lost['id']}.npz").unlink()
    (out / "curves" / f"{garbled['id']}.npz").write_bytes(b"PK\x03\x04 garbled")
    result = CliRunner().invoke(main, ["report", str(out), "--json"])
    assert result.exit_code == 0, result.output
    assert set(json.loads(result.stdout)["unreadable"]) == {lost["id"], garbled["id"]}
    report = (out / "report.md").read_text()
    assert f"{lost['id']}.npz is missing" in report and f"{garbled['id']}.npz is unreadable" in report
    summary = run(exp, out, say=lambda _: None)                   # resume: only the two trials train
    assert summary.ran == 2 and summary.skipped == 4
    assert sweep_document(out)["unreadable"] == {}


def test_a_second_sweep_into_a_folder_in_use_is_refused_with_the_holders_pid(tmp_path):
    path, exp = experiment(tmp_path)
    out = tmp_path / "out"
    prefill(out, exp)
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (out / "sweep.lock").write_text(f"{holder.pid}\n")
        with pytest.raises(FolderInUse, match=f"pid {holder.pid}") as info:
            run(exp, out, say=lambda _: None)
        assert info.value.pid == holder.pid
        result = CliRunner().invoke(main, ["sweep", str(path), "--out", str(out)])
        assert result.exit_code == 2 and f"pid {holder.pid}" in result.output
    finally:
        holder.kill()
        holder.wait()
    with folder_lock(out):                                        # the holder is gone: its lock is taken over
        with pytest.raises(FolderInUse):                          # and this process now holds the folder
            run(exp, out, say=lambda _: None)
    assert not (out / "sweep.lock").exists()
    (out / "sweep.lock").write_text("garbled")
    summary = run(exp, out, say=lambda _: None)                   # a garbled lock is taken over too
    assert summary.ran == 0 and summary.skipped == 12 and not (out / "sweep.lock").exists()


def test_another_experiment_into_the_same_folder_is_refused(tmp_path):
    path, exp = experiment(tmp_path)
    out = tmp_path / "out"
    prefill(out, exp)
    other, _ = experiment(tmp_path, TINY.replace('name = "tiny"', 'name = "other"'), name="other.toml")
    result = CliRunner().invoke(main, ["sweep", str(other), "--out", str(out)])
    assert result.exit_code == 2 and "holds the results of experiment 'tiny'" in result.output
    assert json.loads((out / "experiment.json").read_text())["name"] == "tiny"


@pytest.mark.parametrize("engine", ["slurm", "ray"])
def test_an_adaptive_grid_on_slurm_or_ray_is_refused_with_the_reason(tmp_path, engine):
    path, exp = experiment(tmp_path, TINY.replace("lrs = [0.05, 0.2, 0.8]", "lrs = { start = 1.0, below = 2 }"))
    with pytest.raises(EngineRefused, match="adaptive"):
        run(exp, tmp_path / "out", engine=engine, say=lambda _: None)
    result = CliRunner().invoke(main, ["sweep", str(path), "--out", str(tmp_path / "out2"), "--engine", engine])
    assert result.exit_code == 2 and "adaptive learning-rate grid" in result.output
    assert not (tmp_path / "out2" / "index.sqlite").exists()
