"""Sweeps: experiment files, the trial pipeline with resume, transfer analysis, figures and report."""

from .experiment import Experiment, ExperimentError
from .experiment_file import load_experiment
from .report import write_report
from .results import failed_claims, sweep_document
from .keys import plan_trials
from .run import GateFailed, run

__all__ = ["Experiment", "ExperimentError", "GateFailed", "load_experiment", "failed_claims", "plan_trials", "run",
           "sweep_document", "write_report"]
