"""Sweeps: experiment files, the trial pipeline with resume, transfer analysis, figures and report."""

from .experiment import Experiment, ExperimentError, load_experiment
from .report import write_report
from .run import GateFailed, plan_trials, run

__all__ = ["Experiment", "ExperimentError", "GateFailed", "load_experiment", "plan_trials", "run", "write_report"]
