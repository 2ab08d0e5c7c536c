"""The ``.param`` language: parse, check and query parametrization specs. Imports nothing from torch."""

from .abc import differences, explain
from .build import apply_overrides, find_spec_file, load_spec, preset_names
from .errors import SourcePos, SpecError
from .model import OPTIMIZERS, ROLES, Spec
from .resolve import network, resolve_settings, tensor_rule

__all__ = [
    "OPTIMIZERS", "ROLES", "SourcePos", "Spec", "SpecError", "apply_overrides", "differences", "explain",
    "find_spec_file", "load_spec", "network", "preset_names", "resolve_settings", "tensor_rule",
]
