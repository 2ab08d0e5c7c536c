"""The reproductions S2–S4 of docs/reproductions.md, and the demo's Adam sharpness panel, at the slow tests'
size, with the numbers their claims are judged by (``pytest -m slow tests/test_reproductions.py``). Each runs the
experiment files in runners/ as a sweep (runners/repro_s2.py, runners/repro_s4.py, or ``run`` directly) and
asserts what the document reports."""

import importlib.util
import math
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def runner(name: str):
    sys.path.insert(0, str(ROOT / "runners"))
    spec = importlib.util.spec_from_file_location(name, ROOT / "runners" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_reproduction_files_load_and_round_trip():
    """The experiment files of S2 and S4 validate, run on one thread (the machine's cores are shared), and the
    smaller test versions are the files with top-level keys replaced (``load_experiment``'s overrides)."""
    from mupdsl.sweep import load_experiment

    files = ["repro_s2_transfer", "repro_s2_sharpness_mup", "repro_s2_sharpness_ntp", "repro_s2_sp", "repro_s4"]
    for name in files:
        path = ROOT / "runners" / f"{name}.toml"
        exp = load_experiment(path)
        assert exp.threads == 1 and exp.widths[0] == 64
        small = load_experiment(path, {"widths": [64, 128]})
        assert small.widths == [64, 128] and small.model_dump(exclude={"widths"}) == exp.model_dump(exclude={"widths"})
    s4 = load_experiment(ROOT / "runners" / "repro_s4.toml")
    assert s4.full_batch and s4.optimizer == "adam"
    assert (s4.measure.batch, s4.measure.preconditioner) == ("full", "next")
    assert load_experiment(ROOT / "runners" / "repro_s2_transfer.toml").widths[-1] == 1024


@pytest.mark.slow
def test_reproduction_s2(tmp_path):
    """Seed 002 Fig. 1 / Fig. 3 a in miniature (widths 64, 256, 1024; 300 SGD steps; about 4 minutes)."""
    s2 = runner("repro_s2")
    s = s2.run(tmp_path, small=True)
    mup, ntp = s["transfer"]["mean_field"], s["transfer"]["ntp"]
    assert all(mup["bracketed"].values()) and all(ntp["bracketed"].values())   # every η* inside the grid
    # µP: η* moves less than one grid step (a factor of 2) from width 64 to 1024 (measured +0.46)
    assert abs(mup["shift_narrow_to_wide"]) <= 1.0
    # NTP: η* grows with width by more than one grid step (measured +1.15) but the paper's "two or more" is not
    # reached at this size (docs/reproductions.md, S2: NTP's η* converges to its kernel limit by width 256)
    assert 1.0 < ntp["shift_narrow_to_wide"] < 2.0
    assert ntp["eta_star"][1024] > ntp["eta_star"][64]
    sharp_mup = s["sharpness"]["mean_field"][0.5]
    sharp_ntp = s["sharpness"]["ntp"][2.0]
    # µP at η* (0.5): after warm-up the mean sharpness agrees across widths within 10 % (measured 5.8 %) and sits
    # at the EoS threshold 2/η0 = 4 (ratios 0.99–1.10)
    assert sharp_mup["late_spread"] < 0.10
    assert all(0.9 < r < 1.2 for r in sharp_mup["late_ratio_to_eos"].values())
    # NTP at η0 = 2: the curves separate — the narrowest sharpens (0.63), the widest stays near its start (0.42),
    # all below 2/η0 = 1
    means = sharp_ntp["late_mean"]
    assert sharp_ntp["late_spread"] > 0.3
    assert means[64] > 1.3 * means[1024] and means[64] > means[256]
    assert all(m < 0.8 * sharp_ntp["eos"] for m in means.values())
    # g(t) = |λ_N − λ_1024| fitted by a·t^β: NTP's narrowest grows (β 1.26), µP's do not (β 0.27, −0.10)
    assert sharp_ntp["beta"][64] > 0.8
    assert all(b < 0.5 for b in sharp_mup["beta"].values())
    assert (tmp_path / "repro_s2.png").stat().st_size > 50_000
    assert math.isfinite(s["seconds"]["total"])


@pytest.mark.slow
def test_reproduction_s4(tmp_path):
    """Full-batch Adam at the edge of stability (µP, widths 64–256, η0 = 0.002 and 0.003; about 2 minutes)."""
    s4 = runner("repro_s4")
    s = s4.run(tmp_path, small=True)
    assert sorted(s["per_lr"]) == [0.002, 0.003]
    for lr, widths in s["per_lr"].items():
        assert sorted(widths) == [64, 128, 256]
        for width, p in widths.items():
            assert p["status"] == "done"
            assert p["eos"] == pytest.approx(38 / lr)
            # λmax(D P⁻¹ H) / (38/η0) over steps 100–180: means 0.95–0.99 measured, points 0.78–1.08
            assert 0.88 < p["late_mean"] < 1.08, (lr, width, p["late_mean"])
            assert 0.7 < p["late_min"] and p["late_max"] < 1.25, (lr, width, p["late_min"], p["late_max"])
            assert p["late_points"] == 5 and p["floor_points"] == 0
            # it rises to the threshold (0.07–0.33 at step 20) and reaches 0.8 of it by step 100
            assert p["first_step"] == 20 and p["first_ratio"] < 0.5
            assert p["reached_step"] is not None and p["reached_step"] <= 100
            assert p["floor_share_max"] < 1e-6
    assert (tmp_path / "repro_s4.png").stat().st_size > 30_000


@pytest.mark.slow
def test_reproduction_s3_phase_slopes(tmp_path):
    """Seed 003: η* ∝ γ² for γ ≪ 1 and ∝ γ^{2/L} (L = 4 weight layers: 0.5) for γ ≫ 1, each fitted slope within
    ±0.3 (runners/gamma_eta_phase_cpu.toml as shipped, about 1.5 minutes: measured 1.87 and 0.64)."""
    from mupdsl.sweep import load_experiment, run, sweep_document

    root = Path(__file__).resolve().parent.parent
    run(load_experiment(root / "runners" / "gamma_eta_phase_cpu.toml"), tmp_path / "out", say=lambda _: None)
    phase = sweep_document(tmp_path / "out")["specs"]["richness"]["phase"]
    assert all(phase["bracketed"]) and not phase["unbracketed"]
    assert abs(phase["slope_small"] - 2.0) <= 0.3, phase
    assert abs(phase["slope_large"] - 0.5) <= 0.3, phase
    stars = phase["eta_star"]
    assert all(a < b for a, b in zip(stars, stars[1:]))      # η* grows with γ throughout


@pytest.mark.slow
def test_demo_adam_sharpness_lies_together_under_mup_and_apart_under_sp(tmp_path):
    """The demo's Adam panel (runners/demo.toml as shipped, about a minute): λmax(D P⁻¹ H) at the figure's rate,
    every 5 steps on 1,024 training-like examples with `next`; the median of each run's measurements stays within
    1.3× across widths 32–256 under µP and grows with width under SP (measured 2026-11-30: µP 350/387/407/382,
    SP 350/495/593/712)."""
    from mupdsl.sweep import load_experiment, run, sweep_document

    run(load_experiment(ROOT / "runners" / "demo.toml"), tmp_path / "out", say=lambda _: None)
    specs = sweep_document(tmp_path / "out")["specs"]
    mup, sp = specs["mup"]["sharpness_spread"], specs["sp"]["sharpness_spread"]
    assert mup["lr"] == sp["lr"] == pytest.approx(0.0128)
    medians = list(mup["median"].values())
    assert max(medians) / min(medians) < 1.3, mup
    sp_medians = [sp["median"][w] for w in ("32", "64", "128", "256")]
    assert all(a < b for a, b in zip(sp_medians, sp_medians[1:])), sp     # apart, ordered by width
    assert sp["ratio"] > 1.6 and sp["ratio"] > mup["ratio"] + 0.4, (sp, mup)
    assert specs["mup"]["transfer"] == "PASS" and specs["sp"]["shift"] > 1.5


@pytest.mark.slow
def test_reproduction_s2_sp_eta_star_falls_with_width(tmp_path):
    """SP as the paper writes it (Kaiming init, one rate; runners/repro_s2_sp.toml at widths 64, 256, 1024, about
    2.5 minutes): η* falls with width by more than one grid step (measured 0.407 → 0.159, 1.36 steps), while the
    largest stable rate halves twice (1 at width 64, 0.25 at 1024)."""
    from mupdsl.sweep import load_experiment, run, sweep_document

    exp = load_experiment(ROOT / "runners" / "repro_s2_sp.toml", {"widths": [64, 256, 1024]})
    run(exp, tmp_path / "out", say=lambda _: None)
    entry = sweep_document(tmp_path / "out")["specs"]["sp_kaiming"]
    stars = {int(w): s["eta_star"] for w, s in entry["sizes"].items()}
    assert all(s["bracketed"] for s in entry["sizes"].values()), entry["sizes"]
    assert stars[64] > stars[256] > stars[1024]
    assert math.log(stars[64] / stars[1024]) / entry["grid_step"] > 1.0, stars
    assert entry["transfer"] == "FAIL"
