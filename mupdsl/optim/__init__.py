"""Optimizers beyond torch.optim's (SignSGD, Lion, Muon where torch lacks it, Adafactor with an uncapped rate) and how a weight multiplier folds
into each optimizer family (docs/optimizers.md)."""

from .adafactor import Adafactor
from .families import FAMILY, Folded, adafactor_class, fold_settings
from .muon import Combined, Muon, muon_class, newton_schulz, torch_muon_groups
from .sign import Lion, SignSGD

__all__ = ["Adafactor", "FAMILY", "Combined", "Folded", "Lion", "Muon", "SignSGD", "adafactor_class", "fold_settings",
           "muon_class", "newton_schulz", "torch_muon_groups"]
