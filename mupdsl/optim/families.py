"""Optimizer families: how a weight multiplier folds into each optimizer's settings, and which class runs it.

A compiled model stores ``W = f · w`` instead of using ``f · w`` at run time; the optimizer of ``W`` must then take
settings under which ``W`` moves exactly as ``f · w`` would (the abc-symmetry, TP4 Eq. 5, TP5 Lemma J.1). With
``g_W = g_w / f`` and ``a = |f|``:

* ``sgd`` — the step is linear in the gradient: ``lr · f²``; L2 weight decay ``wd / f²``.
* ``adam`` — the step does not depend on the gradient's scale (Adam, AdamW; SignSGD and Lion, whose step is a
  sign; Muon, whose Newton–Schulz step first divides by ‖G‖_F): ``lr · a``, ``ε / a``; decoupled weight decay
  (``p ← p (1 − lr λ)``) ``wd / a``, Adam's L2 ``wd / f²``.
* ``adafactor`` — Adafactor multiplies its scale-free step by ``max(ε₂, RMS(p))`` (Shazeer & Stern 2018
  "parameter scaling"): ``lr`` and the decoupled ``wd`` unchanged, ``ε₁ / a``, ``ε₂ · a``. Its symmetry is
  ``(a+θ, b−θ, c)`` (Everett et al. 2024, §4.1 of the reference tables). The class is :class:`mupdsl.optim.Adafactor`,
  whose rate multiplies the step; ``torch.optim.Adafactor`` caps it at 1/√t instead (:mod:`mupdsl.optim.adafactor`).
  Without parameter scaling (``adafactor_unscaled``) its step is lr times a scale-free update: the ``adam`` family
  (ε₁ / a; ε₂ is not used).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

FAMILY = {"sgd": "sgd", "adam": "adam", "adamw": "adam", "signsgd": "adam", "lion": "adam", "muon": "adam",
          "adafactor": "adafactor", "adafactor_unscaled": "adam"}
"""The folding family of each optimizer a spec can name."""

DECOUPLED_DECAY = ("adamw", "signsgd", "lion", "muon", "adafactor", "adafactor_unscaled")
"""Optimizers whose weight decay is ``p ← p (1 − lr λ)`` rather than an L2 term in the gradient."""

ADAFACTORS = ("adafactor", "adafactor_unscaled")
"""The spec optimizers run by :class:`mupdsl.optim.Adafactor`: with parameter scaling (torch's algorithm) and without
(``scale_parameter=False``, HuggingFace's fine-tuning recipe)."""

ADAFACTOR_EPS2 = 1e-3
"""torch.optim.Adafactor's default ε₂, the floor of the parameter scale ``max(ε₂, RMS(p))``."""

CLASS_FAMILY = {
    "SGD": "sgd", "ASGD": "sgd",
    "Adam": "adam", "AdamW": "adam", "NAdam": "adam", "RAdam": "adam", "Adamax": "adam", "Adagrad": "adam",
    "RMSprop": "adam", "SparseAdam": "adam", "SignSGD": "adam", "Lion": "adam", "Muon": "adam", "Combined": "adam",
    "Adafactor": "adafactor",
}
"""``torch.optim`` (and ``mupdsl.optim``) classes by family, for checking a class against a plan."""

SIGN_CLASSES = {"SignSGD": "signsgd", "Lion": "lion"}
"""Sign-based classes and the one spec optimizer each runs. They fold as Adam does, but a plan for one takes only
its own class, and their classes take no other plan: the rates are that section's rules (Lion's are typically
several times smaller than Adam's), and a sign has no ε for the plan to carry (Adam would run with its default
ε, neither scaled with width nor divided by a folded multiplier)."""


@dataclass(frozen=True)
class Folded:
    """An optimizer's settings for the stored ``W = f · w``."""

    lr: float
    wd: float | None
    eps: float | None
    eps2_factor: float = 1.0
    """What ε₂ (Adafactor's parameter-scale floor) is multiplied by: |f| for Adafactor, else 1."""


def fold_settings(optimizer: str, fold: float, lr: float, wd: float | None, eps: float | None) -> Folded:
    """The settings under which ``W = fold · w`` trains as ``fold · w`` with ``(lr, wd, eps)`` (module docstring).
    ``eps`` is kept only for optimizers that take one (Adam's ε, Adafactor's ε₁)."""
    family = FAMILY[optimizer]
    a = abs(fold)
    if family == "sgd":
        return Folded(lr * fold * fold, None if wd is None else wd / (fold * fold), None)
    decoupled = optimizer in DECOUPLED_DECAY
    takes_eps = optimizer in ("adam", "adamw") + ADAFACTORS
    eps = eps / a if takes_eps and eps is not None else None
    if family == "adafactor":
        return Folded(lr, wd, eps, eps2_factor=a)
    if wd is not None:
        wd = wd / a if decoupled else wd / (fold * fold)
    return Folded(lr * a, wd, eps)


def adafactor_class() -> type[torch.optim.Optimizer]:
    """The class that runs ``adafactor``: :class:`mupdsl.optim.Adafactor` (any torch), whose learning rate multiplies
    the step — ``torch.optim.Adafactor`` caps it at 1/√t, which no per-tensor rate rule survives."""
    from .adafactor import Adafactor  # noqa: PLC0415 - a sibling module, imported where it is chosen

    return Adafactor


__all__ = ["ADAFACTORS", "ADAFACTOR_EPS2", "CLASS_FAMILY", "DECOUPLED_DECAY", "FAMILY", "Folded", "SIGN_CLASSES",
           "adafactor_class",
           "fold_settings"]
