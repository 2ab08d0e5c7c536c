"""abc exponents of a spec per role, and equivalence under the abc-symmetry.

Convention (TP4 §2; reference/param_tables.md §0): a tensor's effective weight is ``n^-a · w``, ``w`` is
initialised with std ``n^-b`` and trained with learning rate ``η n^-c``. The abc-symmetry leaves training
unchanged (TP4 Eq. 5; TP5 Lemma J.1):

* SGD: ``(a, b, c) -> (a+θ, b-θ, c-2θ)``, so the invariants are ``a+b`` and ``2a+c``;
* Adam/AdamW (ε -> 0), SignSGD, Lion and Muon's matrices: ``(a, b, c) -> (a+θ, b-θ, c-θ)``, invariants ``a+b``
  and ``a+c`` — their step does not depend on the gradient's scale;
* Adafactor (torch's, parameter scaling on): ``(a, b, c) -> (a+θ, b-θ, c)``, invariants ``a+b`` and ``c``.

The output role's ``a`` includes the network's ``1/gamma``. The same symmetry acts on depth exponents.
:data:`SYMMETRY` says, per optimizer, why (and where no symmetry relates two optimizers' exponents).
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

from .errors import SpecError
from .expr import Monomial
from .model import ROLES, Spec
from .resolve import Network, network, resolve_settings, tensor_rule, missing_keys, trained_by

LR_POWER = {"sgd": 2, "adam": 1, "adamw": 1, "signsgd": 1, "lion": 1, "muon": 1, "adafactor": 0,
            "adafactor_unscaled": 1}
"""k of the symmetry ``(a+θ, b−θ, c−kθ)``: how many powers of a weight multiplier the learning rate absorbs."""

SYMMETRY = {
    "sgd": "(a, b, c) → (a+θ, b−θ, c−2θ): SGD's step is linear in the gradient (TP4 Eq. 5, TP5 Lemma J.1).",
    "adam": "(a, b, c) → (a+θ, b−θ, c−θ) as ε → 0: Adam's step m̂/(√v̂+ε) does not depend on the gradient's scale "
            "(TP5 Lemma J.1); ε scales as the gradient (ε/n^θ).",
    "signsgd": "(a, b, c) → (a+θ, b−θ, c−θ), exactly: the step is a sign, ±lr per entry whatever the gradient's "
               "scale (TP4b Remark 2.2.7 treats SignSGD with Adam); µP's rules are Adam's.",
    "lion": "(a, b, c) → (a+θ, b−θ, c−θ), exactly: Lion's step is the sign of a momentum mix, ±lr per entry "
            "(Chen et al. 2023); µP's rules are Adam's.",
    "adafactor": "(a, b, c) → (a+θ, b−θ, c): Adafactor (mupdsl.optim.Adafactor, as torch's) multiplies its "
                 "scale-free step by max(ε₂, RMS(p)) (parameter scaling, always on), which moves with b, so the "
                 "learning rate absorbs nothing; c_Adafactor = c_Adam − b (Everett et al. 2024): an Adam rule is "
                 "not an Adafactor rule.",
    "adafactor_unscaled": "(a, b, c) → (a+θ, b−θ, c−θ) as ε₁ → 0: without parameter scaling Adafactor's step is lr "
                          "times g/√v̂ (factored v̂), clipped to RMS ≤ d, which does not depend on the gradient's "
                          "scale, as Adam's; µP's rules are Adam's (HuggingFace's Adafactor(scale_parameter=False)).",
    "muon": "tensors Muon owns: (a, b, c) → (a+θ, b−θ, c−θ) — Newton–Schulz first divides by ‖G‖_F, so the step "
            "does not depend on the gradient's scale (torch's bfloat16 iteration: up to rounding). But no symmetry "
            "maps Muon's exponents to Adam's: its step has spectral norm Θ(1) (entries ~ 1/√max(fan_in, fan_out)) "
            "where Adam's has Θ(1) entries, so µP's hidden c is 0 for Muon (lr ∝ √(fan_out/fan_in), Yang, Simon & "
            "Bernstein 2023) and 1 for Adam. An Adam rule on Muon's tensors, or √(fan_out/fan_in) applied by both "
            "the spec and the optimizer, is another parametrization, not an equivalent one. The tensors Muon does "
            "not own follow their fallback optimizer's symmetry.",
}
SYMMETRY["adamw"] = SYMMETRY["adam"]


def invariant_names(optimizer: str) -> tuple[str, str]:
    """The names of the two width invariants of ``optimizer``'s symmetry (``a+b`` and ``2a+c`` / ``a+c`` / ``c``)."""
    k = LR_POWER[optimizer]
    return "a+b", {2: "2a+c", 1: "a+c", 0: "c"}[k]

_FAN_WIDTH = {  # (fan_in, fan_out) growth with width per role; TP5 App. B: a bias has fan_in 1
    "input": (0, 1), "hidden": (1, 1), "output": (1, 0), "bias": (0, 1),
    "norm": (0, 1), "embedding": (0, 1), "scalar": (0, 0),
}

KEEP_STD_EXPONENT = {
    "input": Fraction(0), "hidden": Fraction(1, 2), "output": Fraction(1, 2), "bias": Fraction(1, 2),
    "norm": Fraction(0), "embedding": Fraction(0), "scalar": Fraction(0),
}
"""b of PyTorch's default init (``init = keep``): Linear/Conv weights and biases ~ fan_in^-1/2 of their
layer (hidden biases, TP5 Table 8 caption), Embedding N(0, 1), norm gains 1."""


def width_weights(role: str) -> dict[str, Fraction]:
    """How each size variable grows with width n (as n^weight) for a tensor of ``role``."""
    fan_in, fan_out = _FAN_WIDTH[role]
    return {
        "width": Fraction(1), "width_mult": Fraction(1), "d_head": Fraction(1),
        "fan_in": Fraction(fan_in), "fan_in_mult": Fraction(fan_in),
        "fan_out": Fraction(fan_out), "fan_out_mult": Fraction(fan_out),
    }


DEPTH_WEIGHTS = {"depth": Fraction(1), "depth_mult": Fraction(1)}
NETWORK_WIDTH_WEIGHTS = {"width": Fraction(1), "width_mult": Fraction(1), "d_head": Fraction(1),
                         "keep": Fraction(-1, 2)}
"""``keep`` (the model's own attention scale) is taken to be the standard 1/sqrt(d_head), as ``init = keep`` is
taken to be PyTorch's default; ``base`` (the own scale at the base width) is width-independent."""


@dataclass(frozen=True)
class RoleExponents:
    """a, b, c of one role in width (and the same in depth); ``b is None`` for zero init."""

    role: str
    residual: bool
    a: Fraction
    b: Fraction | None
    c: Fraction
    a_depth: Fraction
    b_depth: Fraction | None
    c_depth: Fraction
    texts: dict[str, str]
    rules: dict[str, str]
    optimizer: str = ""
    """The optimizer that trains the role (under ``muon``: ``muon`` or the fallback)."""

    def same_rule(self, other: "RoleExponents | None") -> bool:
        """Same init, mult and lr (what the table shows); eps/wd and the residual flag are ignored."""
        keys = ("init", "mult", "lr")
        return other is not None and all(self.texts.get(k) == other.texts.get(k) for k in keys) and (
            self.invariants("sgd"), self.invariants("adam"), self.a, self.c) == (
            other.invariants("sgd"), other.invariants("adam"), other.a, other.c)

    def invariants(self, optimizer: str) -> tuple:
        """The quantities the abc-symmetry of ``optimizer`` leaves fixed (for width, then depth); under ``muon``, the
        symmetry of the optimizer that trains the role."""
        if optimizer == "muon" and self.optimizer:
            optimizer = self.optimizer
        k = LR_POWER[optimizer]
        width = (None if self.b is None else self.a + self.b, k * self.a + self.c)
        depth = (None if self.b_depth is None else self.a_depth + self.b_depth, k * self.a_depth + self.c_depth)
        return width + depth


def _neg_exp(m: Monomial | None, weights: dict[str, Fraction]) -> Fraction:
    return Fraction(0) if m is None else -m.exponent(weights)


def role_exponents(spec: Spec, optimizer: str, role: str, net: Network | None = None,
                   residual: bool = False) -> RoleExponents | None:
    """Exponents of the role-level rule (name globs ignored); None if no rule decides the role."""
    settings = resolve_settings(spec, optimizer, None, role, residual)
    if missing_keys(settings):
        return None
    net = net or network(spec, optimizer)
    rule = tensor_rule(spec, optimizer, None, role, net, residual)
    ww, dw = width_weights(role), DEPTH_WEIGHTS
    a, a_d = _neg_exp(rule.mult, ww), _neg_exp(rule.mult, dw)
    if role == "output":
        a += net.gamma.exponent(NETWORK_WIDTH_WEIGHTS)
        a_d += net.gamma.exponent(dw)
    if rule.init_kind == "zero":
        b = b_d = None
    else:
        b, b_d = _neg_exp(rule.init_scale, ww), _neg_exp(rule.init_scale, dw)
        if rule.init_kind == "keep":
            b += KEEP_STD_EXPONENT[role]  # PyTorch's default init; "base" is width-independent by definition
    texts = {key: s.text for key, s in settings.items()}
    rules = {key: str(s.pos) for key, s in settings.items()}
    return RoleExponents(role, residual, a, b, _neg_exp(rule.lr, ww), a_d, b_d, _neg_exp(rule.lr, dw), texts, rules,
                         trained_by(spec, optimizer, None, role, residual))


@dataclass(frozen=True)
class Explanation:
    spec: Spec
    optimizer: str
    roles: dict[str, RoleExponents | None]
    residual_roles: dict[str, RoleExponents | None]
    """The same for tensors on residual branches (differs only where a ``residual`` rule applies)."""
    network: Network
    attention_exponent: Fraction | None
    branch_depth_exponent: Fraction

    @property
    def symmetry(self) -> str:
        """Which abc-symmetry holds for this optimizer, and why (:data:`SYMMETRY`)."""
        note = SYMMETRY[self.optimizer]
        if self.optimizer == "muon":
            note += f" Here the fallback is {self.spec.fallback}: {SYMMETRY[self.spec.fallback]}"
        return note

    def network_invariants(self) -> tuple:
        return (self.attention_exponent, self.branch_depth_exponent,
                float(self.network.tau.coef) if self.network.tau.is_const else str(self.network.tau),
                self.network.center)


def explain(spec: Spec, optimizer: str) -> Explanation:
    net = network(spec, optimizer)
    roles = {role: role_exponents(spec, optimizer, role, net) for role in ROLES}
    residual_roles = {role: role_exponents(spec, optimizer, role, net, residual=True) for role in ROLES}
    attention = -net.attention.exponent(NETWORK_WIDTH_WEIGHTS) if net.attention is not None else None
    return Explanation(spec, optimizer, roles, residual_roles, net, attention, -net.branch.exponent(DEPTH_WEIGHTS))


@dataclass(frozen=True)
class Difference:
    what: str
    left: str
    right: str


def differences(left: Spec, right: Spec, optimizer: str) -> list[Difference]:
    """Where two specs differ modulo the abc-symmetry of ``optimizer``; empty when they are equivalent.

    Roles that neither spec decides are skipped; a role only one decides is a difference.
    """
    a, b = explain(left, optimizer), explain(right, optimizer)
    out: list[Difference] = []
    for prefix, table_a, table_b in (("", a.roles, b.roles), ("residual ", a.residual_roles, b.residual_roles)):
        for role in ROLES:
            ra, rb = table_a[role], table_b[role]
            if ra is None and rb is None:
                continue
            if ra is None or rb is None:
                out.append(Difference(prefix + role, "decided" if ra else "undecided",
                                      "decided" if rb else "undecided"))
                continue
            if (ra.b is None) != (rb.b is None):
                out.append(Difference(f"{prefix}{role}: init", "zero" if ra.b is None else "non-zero",
                                      "zero" if rb.b is None else "non-zero"))
            if optimizer == "muon" and ra.optimizer != rb.optimizer:
                out.append(Difference(f"{prefix}{role}: trained by", ra.optimizer, rb.optimizer))
                continue
            width_names = invariant_names(ra.optimizer if optimizer == "muon" else optimizer)
            names = width_names + tuple(f"depth {n}" for n in width_names)
            for label, x, y in zip(names, ra.invariants(optimizer), rb.invariants(optimizer)):
                if x != y and x is not None and y is not None:
                    out.append(Difference(f"{prefix}{role}: {label}", fmt(x), fmt(y)))
    for label, x, y in zip(("attention exponent", "branch depth exponent", "tau", "center"),
                           a.network_invariants(), b.network_invariants()):
        if label == "attention exponent" and (x is None or y is None):
            x, y = ("model default" if x is None else x), ("model default" if y is None else y)
        if x != y:
            out.append(Difference(label, fmt(x), fmt(y)))
    return out


def fmt(value) -> str:
    """An exponent as an exact fraction; None (zero init, or the model's own attention scale) as 'none'."""
    if value is None:
        return "none"
    if isinstance(value, Fraction):
        return str(value.numerator) if value.denominator == 1 else f"{value.numerator}/{value.denominator}"
    return str(value)


__all__ = ["LR_POWER", "SYMMETRY", "Explanation", "RoleExponents", "Difference", "differences", "explain", "fmt",
           "invariant_names", "role_exponents", "width_weights", "SpecError"]
