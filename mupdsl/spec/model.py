"""The typed spec: what a ``.param`` file means, as pydantic models that know their source positions.

A :class:`Spec` is the result of loading a file and every file it ``extends``: hyperparameters with their
values, an ordered list of :class:`Rule` (each with the section it belongs to: all optimizers, ``sgd``,
``adam``, ``adamw``, ``signsgd``, ``lion``, ``adafactor``, ``adafactor_unscaled`` or ``muon``) and the
network-level settings. Nothing here imports torch.
"""

from __future__ import annotations

from fractions import Fraction
from typing import Literal

from pydantic import BaseModel, ConfigDict, PrivateAttr

from .errors import SourcePos

ROLES = ("input", "hidden", "output", "bias", "norm", "embedding", "scalar")
"""Tensor roles (TP5 App. B): input weights, hidden (matrix-like) weights, the readout, biases,
normalisation gains/biases, embedding tables, and scalar-like parameters."""

OPTIMIZERS = ("sgd", "adam", "adamw", "signsgd", "lion", "adafactor", "adafactor_unscaled", "muon")
SECTIONS = ("all",) + OPTIMIZERS
SectionName = Literal["all", "sgd", "adam", "adamw", "signsgd", "lion", "adafactor", "adafactor_unscaled", "muon"]

TENSOR_KEYS = ("init", "mult", "lr", "wd", "eps", "muon")
"""Per-tensor settings: init distribution, forward multiplier, learning rate, weight decay, Adam epsilon, and
(in a ``muon`` section only) whether Muon trains the tensor."""

NO_EPS = ("signsgd", "lion", "muon")
"""Optimizers without an ε (Muon's is only Newton–Schulz's guard against a zero gradient): a rule in their section
that sets ``eps`` is an error. An ``eps`` in the common part or in ``adam``'s section is ignored by them, as SGD
ignores it."""

OWN_SECTION_ONLY = {"adafactor": ("lr", "eps"), "muon": ("lr",)}
"""Settings these optimizers do not take from the common part's role and ``default`` rules: those rates are
written for the steps whose scale does not depend on the weights' (SGD's, Adam's and those that read Adam's
rules), while Adafactor scales its step by RMS(p) (c_Adafactor = c_Adam − b, Everett et al. 2024) and Muon's
orthogonalised step has spectral norm Θ(1) (hidden c = 0 where Adam's is 1). Adafactor's ε₁ floors g², not
Adam's √v̂. A preset that writes its rates in the common part (``mean_field``, ``umup``) is therefore an error
under them ("no rule decides lr"), not a silently wrong run. A common-part rule with a name glob still applies:
it names its tensors on purpose. Muon's fallback resolves as that optimizer does (an ``adafactor`` fallback
does not read the common part's rates either)."""

MUON_FALLBACKS = ("adam", "adamw", "sgd", "signsgd", "lion", "adafactor", "adafactor_unscaled")
"""Optimizers that may train the tensors Muon does not own (``fallback = …`` in a ``muon`` section)."""
DEFAULT_MUON_FALLBACK = "adamw"

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


EXPR_KINDS = ("num", "var", "mul", "div", "pow", "neg", "add", "sub")


class Expr:
    """An expression node. ``kind`` is one of num, var, mul, div, pow, neg, add, sub (add/sub only in exponents).

    Immutable. ``text`` is the exact source text the node covers; a node read from a file keeps a reference to the
    file's text and the span (``source``, ``span``) instead of its own copy, so that a flat product of thousands of
    factors, each of whose prefixes is a node, costs memory linear in its length, not quadratic. A plain class
    with ``__slots__`` (not a pydantic model): a large spec holds hundreds of thousands of nodes.
    """

    __slots__ = ("kind", "pos", "value", "name", "args", "_text", "_source", "_span")

    def __init__(self, kind: str, pos: SourcePos, text: str | None = None, value: Fraction | None = None,
                 name: str | None = None, args: tuple["Expr", ...] = (), *, source: str | None = None,
                 span: tuple[int, int] | None = None) -> None:
        if kind not in EXPR_KINDS:
            raise ValueError(f"unknown expression kind {kind!r}")
        if text is None and (source is None or span is None):
            raise ValueError("an Expr needs its text, or its source and span")
        setter = object.__setattr__
        setter(self, "kind", kind)
        setter(self, "pos", pos)
        setter(self, "value", value)
        setter(self, "name", name)
        setter(self, "args", tuple(args))
        setter(self, "_text", text)
        setter(self, "_source", source if text is None else None)
        setter(self, "_span", span if text is None else None)

    @property
    def text(self) -> str:
        if self._text is not None:
            return self._text
        start, end = self._span
        return self._source[start:end]

    def __setattr__(self, name, value):
        raise AttributeError("Expr is immutable")

    def regrouped(self, pos: SourcePos, source: str, span: tuple[int, int]) -> "Expr":
        """The same node with the position and source span of the parentheses around it (a parenthesised group
        is its inner expression, covering the parentheses too)."""
        copy = object.__new__(Expr)
        setter = object.__setattr__
        for name in ("kind", "value", "name", "args"):
            setter(copy, name, getattr(self, name))
        setter(copy, "pos", pos)
        setter(copy, "_text", None)
        setter(copy, "_source", source)
        setter(copy, "_span", span)
        return copy

    def model_copy(self, update: dict | None = None) -> "Expr":
        """A copy with some fields replaced (the pydantic-style call the reader uses for parenthesised groups)."""
        fields = {"kind": self.kind, "pos": self.pos, "value": self.value, "name": self.name, "args": self.args}
        text, source, span = self._text, self._source, self._span
        for key, value in (update or {}).items():
            if key == "text":
                text, source, span = value, None, None
            elif key == "span":
                text, span = None, value
            elif key == "source":
                source = value
            else:
                fields[key] = value
        if text is None and source is None:
            text = self.text
        return Expr(text=text, source=source, span=span, **fields)

    def names(self) -> set[str]:
        """Every variable name the expression mentions."""
        found: set[str] = set()
        stack = [self]          # no recursion: an expression may be a flat product of thousands of factors
        while stack:
            node = stack.pop()
            if node.kind == "var" and node.name:
                found.add(node.name)
            stack.extend(node.args)
        return found

    def _key(self) -> tuple:
        return (self.kind, self.pos, self.text, self.value, self.name, len(self.args))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Expr):
            return NotImplemented
        stack = [(self, other)]   # iterative: no recursion limit on deep expressions
        while stack:
            a, b = stack.pop()
            if a is b:
                continue
            if a._key() != b._key():
                return False
            stack.extend(zip(a.args, b.args))
        return True

    def __hash__(self) -> int:
        return hash((self.kind, self.pos, self.text))

    def __repr__(self) -> str:
        return f"Expr({self.kind}, {self.text!r} at {self.pos})"

    def __str__(self) -> str:
        return self.text

    def __reduce__(self):
        return (_rebuild_expr, (self.kind, self.pos, self.text, self.value, self.name, self.args))


def _rebuild_expr(kind, pos, text, value, name, args) -> Expr:
    return Expr(kind, pos, text, value, name, args)


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
    section: SectionName
    settings: dict[str, Setting]
    pos: SourcePos
    order: int
    """Position in the merged spec: parents first, then the file's own rules in order (ties go to the later)."""


class NetworkSetting(BaseModel):
    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    section: SectionName
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
    fallback: str = DEFAULT_MUON_FALLBACK
    """The optimizer of the tensors Muon does not own (``muon { fallback = … }``); AdamW unless a spec says."""
    fallback_pos: SourcePos | None = None

    _rules_without_glob: tuple | None = PrivateAttr(default=None)

    def hyper_values(self) -> dict[str, Fraction]:
        return {name: h.value for name, h in self.hypers.items()}

    def rules_without_glob(self) -> tuple[Rule, ...]:
        """The rules that select by role alone (no name glob): all that can apply to a query by role, as
        ``explain`` asks. Derived from ``rules`` once (a spec is immutable)."""
        cached = self._rules_without_glob
        if cached is None or cached[0] is not self.rules:   # a model_copy with new rules derives them again
            cached = self._rules_without_glob = (self.rules, tuple(r for r in self.rules if r.selector.glob is None))
        return cached[1]
