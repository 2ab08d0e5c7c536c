"""The typed spec: what a ``.param`` file means, as pydantic models that know their source positions.

A :class:`Spec` is the result of loading a file and every file it ``extends``: hyperparameters with their
values, an ordered list of :class:`Rule` (each with the section it belongs to: all optimizers, ``sgd``,
``adam`` or ``adamw``) and the network-level settings. Nothing here imports torch.
"""

from __future__ import annotations

from fractions import Fraction
from typing import Literal

from pydantic import BaseModel, ConfigDict

from .errors import SourcePos

ROLES = ("input", "hidden", "output", "bias", "norm", "embedding", "scalar")
"""Tensor roles (TP5 App. B): input weights, hidden (matrix-like) weights, the readout, biases,
normalisation gains/biases, embedding tables, and scalar-like parameters."""

OPTIMIZERS = ("sgd", "adam", "adamw")
SECTIONS = ("all",) + OPTIMIZERS

TENSOR_KEYS = ("init", "mult", "lr", "wd", "eps")
"""Per-tensor settings: init distribution, forward multiplier, learning rate, weight decay, Adam epsilon."""

REQUIRED_TENSOR_KEYS = ("init", "mult", "lr")

NETWORK_KEYS = ("gamma", "tau", "alpha", "branch", "attention", "center")
"""Network-level settings: output multiplier 1/gamma, skip factor tau, residual exponent alpha,
branch multiplier (default depth^-alpha), attention logit scale, centering f - f0 (seed 002 Eq. 1, seed 003 App. A)."""

INIT_KINDS = ("normal", "uniform", "zero", "keep", "base", "const")

SIZE_VARIABLES = (
    "width", "base_width", "width_mult",
    "fan_in", "fan_out", "base_fan_in", "base_fan_out", "fan_in_mult", "fan_out_mult",
    "depth", "base_depth", "depth_mult", "k", "d_head", "base_d_head", "D",
)
"""Size variables an expression may use. ``fan_*`` are per tensor, read from the op that consumes it;
``*_mult`` are ratios to the base model (TP5 Eq. 4)."""

ATTENTION_OWN_SCALES = ("keep", "base")
"""Names the ``attention`` rule may use for the model's own logit scale: ``keep`` at the model's size, ``base`` at
the base size. A spec's scale *replaces* the model's own, wherever the model applies it (design.md §3), so
``attention = keep`` changes nothing and ``base * base_d_head / d_head`` is µP's 1/d anchored at the model's own
scale at the base width (T5's 1, GPT's 1/sqrt(d)) — the base model is then the user's model (TP5 Eq. 4)."""

NETWORK_SIZE_VARIABLES = ("width", "base_width", "width_mult", "depth", "base_depth", "depth_mult",
                          "k", "d_head", "base_d_head", "D")
"""The size variables that mean something for the whole network (no per-tensor fan-in/fan-out)."""


class Expr(BaseModel):
    """An expression node. ``kind`` is one of num, var, mul, div, pow, neg, add, sub (add/sub only in exponents)."""

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    kind: Literal["num", "var", "mul", "div", "pow", "neg", "add", "sub"]
    pos: SourcePos
    text: str
    value: Fraction | None = None
    name: str | None = None
    args: tuple["Expr", ...] = ()

    def names(self) -> set[str]:
        """Every variable name the expression mentions."""
        found = {self.name} if self.kind == "var" and self.name else set()
        for arg in self.args:
            found |= arg.names()
        return found

    def __str__(self) -> str:
        return self.text


class Init(BaseModel):
    """An init rule: ``normal(std = E)``, ``uniform(std = E)``, ``zero``, ``keep [* E]``, ``base [* E]`` or
    ``const(value = E)``.

    ``keep`` is the model's own init at its width; ``base`` is the model's own init rescaled to the std it has at
    the base width (so ``base * fan_in_mult^(-1/2)`` is µP's hidden init whatever the model's init scheme).
    ``scale`` is the std (normal, uniform), the factor (keep, base) or the value (const).
    """

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    kind: Literal["normal", "uniform", "zero", "keep", "base", "const"]
    scale: Expr | None = None
    text: str


class Setting(BaseModel):
    """``key = value`` inside a rule or the network block."""

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    key: str
    value: Expr | Init | bool
    pos: SourcePos

    @property
    def text(self) -> str:
        value = self.value
        if isinstance(value, bool):
            return "true" if value else "false"
        return value.text


class Selector(BaseModel):
    """Which tensors a rule addresses: a role, a qualified-name glob, both, or everything (``default``)."""

    model_config = ConfigDict(frozen=True)

    role: str | None = None
    glob: str | None = None
    residual: bool = False
    """Only tensors on a residual branch (inside a block the compiler found), e.g. ``residual hidden``."""

    @property
    def is_default(self) -> bool:
        return self.role is None and self.glob is None and not self.residual

    def __str__(self) -> str:
        if self.is_default:
            return "default"
        parts = ["residual"] if self.residual else []
        parts += [self.role] if self.role else []
        if self.glob is not None:
            parts.append(f'"{self.glob}"')
        return " ".join(parts)


class Rule(BaseModel):
    """A rule block: its selector, the section it sits in, and its settings by key."""

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    selector: Selector
    section: Literal["all", "sgd", "adam", "adamw"]
    settings: dict[str, Setting]
    pos: SourcePos
    order: int
    """Position in the merged spec: parents first, then the file's own rules in order (ties go to the later)."""


class NetworkSetting(BaseModel):
    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    section: Literal["all", "sgd", "adam", "adamw"]
    setting: Setting
    order: int


class Hyper(BaseModel):
    """A hyperparameter: declared with a default, possibly overridden by ``set``, a child spec or the caller."""

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    name: str
    value: Fraction
    pos: SourcePos
    """Where the value in force was written (the declaration, a ``set``, or ``<override>``)."""
    declared_at: SourcePos


class Spec(BaseModel):
    """A loaded spec, with everything it extends merged in."""

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    name: str
    path: str
    chain: tuple[str, ...]
    """The files that make up this spec, the spec's own file first, then what it extends."""
    hypers: dict[str, Hyper]
    rules: tuple[Rule, ...]
    network: tuple[NetworkSetting, ...]

    def hyper_values(self) -> dict[str, Fraction]:
        return {name: h.value for name, h in self.hypers.items()}
