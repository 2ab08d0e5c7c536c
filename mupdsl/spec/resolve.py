"""Which rule decides what: glob matching, most-specific-first resolution, and evaluation at given sizes.

Resolution is per setting (``init``, ``mult``, ``lr``, ``wd``, ``eps``): for each one, the most specific
matching rule that sets it wins. Specificity, compared in this order (docs/language.md, "Which rule wins"):

1. a rule with a name glob beats one without; among globs, more literal characters win;
2. a rule with a role beats one without (``default``); then a ``residual`` rule beats one without;
3. an optimizer section beats the common part (for AdamW: ``adamw`` > ``adam`` > common; SignSGD and Lion
   inherit ``adam``'s section as AdamW does, and so does ``adafactor_unscaled``; Adafactor and Muon do not);
4. the later rule wins (a child spec's rules come after its parent's).
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from fractions import Fraction
from typing import Mapping

from .errors import SourcePos, SpecError
from .expr import Monomial, to_monomial
from .limits import exponent_from_float
from .model import NETWORK_KEYS, OWN_SECTION_ONLY, REQUIRED_TENSOR_KEYS, TENSOR_KEYS, Expr, Init, Rule, Setting, Spec

SECTION_RANK = {
    "sgd": {"all": 0, "sgd": 1},
    "adam": {"all": 0, "adam": 1},
    "adamw": {"all": 0, "adam": 1, "adamw": 2},
    "signsgd": {"all": 0, "adam": 1, "signsgd": 2},
    "lion": {"all": 0, "adam": 1, "lion": 2},
    "adafactor": {"all": 0, "adafactor": 1},
    "adafactor_unscaled": {"all": 0, "adam": 1, "adafactor_unscaled": 2},
    "muon": {"all": 0, "muon": 1},
}
"""Which sections each optimizer reads, and their precedence. Sign-like updates scale as Adam's (TP4b Remark 2.2.7),
so ``signsgd`` and ``lion`` start from ``adam``'s rules, as does Adafactor without parameter scaling
(``adafactor_unscaled``: lr times a scale-free update, like Adam's); Adafactor's parameter-scaled step
(c_Adafactor = c_Adam − b, Everett et al. 2024) and Muon's orthogonalised one need rules of their own. Under
``muon`` the tensors Muon does not own are resolved as their fallback optimizer (:func:`trained_by`)."""

TensorNames = str | tuple[str, ...] | None
"""A tensor's qualified name, or its names (its own first, then its tied aliases), or None for a role alone."""

NETWORK_DEFAULTS = {"gamma": "1", "tau": "1", "alpha": "0", "center": "false"}
"""Values of network settings a spec leaves out; ``branch`` defaults to depth^-alpha and ``attention`` to the
model's own scale (nothing is changed)."""


def glob_problem(glob: str) -> tuple[int, str] | None:
    """The first problem of a name glob as (index in ``glob``, message), or None: an unclosed or empty character
    class, a range that runs backwards (``[z-a]``), a '[' inside a class or a ']' outside one."""
    i = 0
    while i < len(glob):
        ch = glob[i]
        if ch == "]":
            return i, "']' without a matching '['"
        if ch != "[":
            i += 1
            continue
        end = glob.find("]", i + 1)
        if end < 0:
            return i, "unclosed '[' in name glob"
        body = glob[i + 1:end]
        if "[" in body:
            return i + 1 + body.index("["), "'[' inside a character class"
        items = body[1:] if body.startswith("!") else body
        if not items:
            return i, "empty character class in name glob"
        for k in range(1, len(items) - 1):
            if items[k] == "-" and items[k - 1] > items[k + 1]:
                at = i + 1 + (len(body) - len(items)) + k
                return at, f"range '{items[k - 1]}-{items[k + 1]}' runs backwards"
        i = end + 1
    return None


class GlobMatcher:
    """A compiled name glob, matched in time linear in the name (a set of positions in the glob, advanced one
    character at a time — no backtracking, so ``"**?**?**?…Z"`` costs what ``"blocks.*"`` costs).

    ``*`` matches within one dotted name part, ``**`` across parts, ``?`` one character other than a dot,
    ``[..]`` / ``[!..]`` one character of (not of) a class, which may hold ranges ``a-z``.
    """

    def __init__(self, glob: str) -> None:
        problem = glob_problem(glob)
        if problem is not None:
            raise ValueError(f"bad name glob {glob!r}: {problem[1]}")
        self.glob = glob
        tokens: list[tuple[str, object]] = []
        i = 0
        while i < len(glob):
            ch = glob[i]
            if glob.startswith("**", i):
                kind, arg, i = "any", None, i + 2
            elif ch == "*":
                kind, arg, i = "part", None, i + 1
            elif ch == "?":
                kind, arg, i = "one", None, i + 1
            elif ch == "[":
                end = glob.index("]", i)
                kind, arg, i = "class", _char_class(glob[i + 1:end]), end + 1
            else:
                kind, arg, i = "char", ch, i + 1
            if kind in ("any", "part") and tokens and tokens[-1][0] in ("any", "part"):
                tokens[-1] = ("any" if "any" in (kind, tokens[-1][0]) else "part", None)  # one run, not two
                continue
            tokens.append((kind, arg))
        self.tokens = tokens
        prefix = []
        for kind, arg in tokens:   # the literal characters every match starts with: most names fail on them at once
            if kind != "char":
                break
            prefix.append(arg)
        self.prefix = "".join(prefix)
        n = len(tokens)
        # closure[j]: the positions reachable from j without reading a character (a run may match nothing)
        self.closure = []
        for j in range(n + 1):
            reach = [j]
            while reach[-1] < n and tokens[reach[-1]][0] in ("any", "part"):
                reach.append(reach[-1] + 1)
            self.closure.append(reach)

    def match(self, name: str) -> bool | None:
        """True when the glob matches the whole of ``name``, else None (as ``re.Pattern.match`` answers)."""
        if not name.startswith(self.prefix):
            return None
        tokens, closure, n = self.tokens, self.closure, len(self.tokens)
        current = set(closure[0])
        for ch in name:
            following: set[int] = set()
            for j in current:
                if j == n:
                    continue
                kind, arg = tokens[j]
                if kind == "any" or (kind == "part" and ch != "."):
                    following.update(closure[j])
                elif (kind == "char" and ch == arg) or (kind == "one" and ch != ".") or (
                        kind == "class" and arg(ch)):
                    following.update(closure[j + 1])
            if not following:
                return None
            current = following
        return True if n in current else None

    fullmatch = match

    def __repr__(self) -> str:
        return f"GlobMatcher({self.glob!r})"


def _char_class(body: str):
    negate = body.startswith("!")
    items = body[1:] if negate else body
    chars, ranges, k = set(), [], 0
    while k < len(items):
        if k + 2 < len(items) and items[k + 1] == "-":
            ranges.append((items[k], items[k + 2]))
            k += 3
        else:
            chars.add(items[k])
            k += 1

    def test(ch: str) -> bool:
        inside = ch in chars or any(lo <= ch <= hi for lo, hi in ranges)
        return inside != negate
    return test


@functools.lru_cache(maxsize=2**17)   # more than a spec file within the size limit can hold
def glob_matcher(glob: str) -> GlobMatcher:
    """The compiled matcher of a name glob (cached)."""
    return GlobMatcher(glob)




def glob_literal_length(glob: str) -> int:
    return len(re.sub(r"\*+|\?|\[[^\]]*\]", "", glob))


def rule_matches(rule: Rule, name: TensorNames, role: str, residual: bool = False) -> bool:
    """Whether a rule applies to tensor ``name`` of ``role``; ``name=None`` asks about the role alone (no globs).
    A tensor with several names (a tied weight: HF GPT-2's ``lm_head.weight`` is ``transformer.wte.weight``) is
    ``(name, *aliases)``, and a glob that matches any of them selects it."""
    sel = rule.selector
    if sel.role is not None and sel.role != role:
        return False
    if sel.residual and not residual:
        return False
    if sel.glob is None:
        return True
    if name is None:
        return False
    matcher = glob_matcher(sel.glob)
    return any(matcher.match(n) is not None for n in ((name,) if isinstance(name, str) else name))


def _rank(rule: Rule, optimizer: str) -> tuple:
    sel = rule.selector
    glob_rank = (1, glob_literal_length(sel.glob)) if sel.glob is not None else (0, 0)
    return glob_rank + (sel.role is not None, sel.residual, SECTION_RANK[optimizer][rule.section], rule.order)


def most_specific_rule(spec: Spec, optimizer: str, name: TensorNames, role: str, residual: bool = False) -> Rule | None:
    """The most specific rule that applies to a tensor (for reporting which rule decided it), or None."""
    optimizer = trained_by(spec, check_optimizer(optimizer), name, role, residual)
    matching = [r for r in spec.rules if r.section in SECTION_RANK[optimizer] and rule_matches(r, name, role, residual)]
    return max(matching, key=lambda r: _rank(r, optimizer)) if matching else None


def check_optimizer(optimizer: str) -> str:
    if optimizer not in SECTION_RANK:
        raise ValueError(f"unknown optimizer '{optimizer}': choose one of {', '.join(SECTION_RANK)}")
    return optimizer


def trained_by(spec: Spec, optimizer: str, name: TensorNames, role: str, residual: bool = False) -> str:
    """The optimizer that trains a tensor: ``optimizer`` itself, except under ``muon``, where a tensor is Muon's
    when the most specific ``muon = true|false`` of the ``muon`` section says so — by default the matrix-like
    ``hidden`` weights — and the spec's fallback's (AdamW unless ``fallback = …``) otherwise."""
    if optimizer != "muon":
        return optimizer
    setting = _winning(spec, "muon", name, role, residual).get("muon")
    owned = bool(setting.value) if setting is not None else role == "hidden"
    return "muon" if owned else spec.fallback


def resolve_settings(spec: Spec, optimizer: str, name: TensorNames, role: str,
                     residual: bool = False) -> dict[str, Setting]:
    """The winning setting for each key that some matching rule sets (``residual``: the tensor is on a branch).
    Under ``muon``, a tensor Muon does not own is resolved as its fallback optimizer (:func:`trained_by`)."""
    check_optimizer(optimizer)
    return _winning(spec, trained_by(spec, optimizer, name, role, residual), name, role, residual)


def _winning(spec: Spec, optimizer: str, name: TensorNames, role: str, residual: bool) -> dict[str, Setting]:
    best: dict[str, tuple[tuple, Setting]] = {}
    for rule in spec.rules if name is not None else spec.rules_without_glob():
        if rule.section not in SECTION_RANK[optimizer] or not rule_matches(rule, name, role, residual):
            continue
        rank = _rank(rule, optimizer)
        # a glob names tensors on purpose; a role or default rule of the common part is a rate for other steps
        skipped = OWN_SECTION_ONLY.get(optimizer, ()) if rule.section == "all" and rule.selector.glob is None else ()
        for key, setting in rule.settings.items():
            if key in skipped:
                continue
            if key not in best or rank > best[key][0]:
                best[key] = (rank, setting)
    return {key: setting for key, (_, setting) in best.items()}


def missing_keys(settings: Mapping[str, Setting]) -> list[str]:
    return [key for key in REQUIRED_TENSOR_KEYS if key not in settings]


def network_setting(spec: Spec, optimizer: str, key: str) -> Setting | None:
    """The network setting in force for ``key`` (an optimizer section beats the common block; later wins)."""
    check_optimizer(optimizer)
    best: tuple[tuple, Setting] | None = None
    for ns in spec.network:
        if ns.setting.key != key or ns.section not in SECTION_RANK[optimizer]:
            continue
        rank = (SECTION_RANK[optimizer][ns.section], ns.order)
        if best is None or rank > best[0]:
            best = (rank, ns.setting)
    return best[1] if best else None


# ---------------------------------------------------------------------------------------------------------
# Folding to monomials


@dataclass(frozen=True)
class Network:
    """Network-level values as monomials of the network size variables."""

    gamma: Monomial
    tau: Monomial
    alpha: Fraction
    branch: Monomial
    attention: Monomial | None
    center: bool
    sources: Mapping[str, SourcePos | None]


def _lookup(spec: Spec, extra: Mapping[str, Monomial]):
    hypers = spec.hyper_values()

    def lookup(name: str, node: Expr) -> Monomial:
        if name in hypers:
            return Monomial.const(float(hypers[name]))
        if name in extra:
            return extra[name]
        return Monomial.var(name)

    return lookup


def network(spec: Spec, optimizer: str) -> Network:
    """The network settings for one optimizer, folded to monomials."""
    values: dict[str, Monomial] = {}
    sources: dict[str, SourcePos | None] = {}
    center = False
    for key in ("alpha", "gamma", "tau"):
        setting = network_setting(spec, optimizer, key)
        sources[key] = setting.pos if setting else None
        if setting is None:
            values[key] = Monomial.const(float(Fraction(NETWORK_DEFAULTS[key])))
        else:
            values[key] = to_monomial(setting.value, _lookup(spec, values))
    alpha = exponent_from_float(values["alpha"].coef)   # a simple fraction: checked when the spec was read
    extra = {"alpha": Monomial.const(float(alpha))}
    branch_setting = network_setting(spec, optimizer, "branch")
    sources["branch"] = branch_setting.pos if branch_setting else None
    if branch_setting is None:
        branch = Monomial.var("depth").pow(-alpha)
    else:
        branch = to_monomial(branch_setting.value, _lookup(spec, extra))
    attention_setting = network_setting(spec, optimizer, "attention")
    sources["attention"] = attention_setting.pos if attention_setting else None
    attention = to_monomial(attention_setting.value, _lookup(spec, extra)) if attention_setting else None
    center_setting = network_setting(spec, optimizer, "center")
    sources["center"] = center_setting.pos if center_setting else None
    if center_setting is not None:
        center = bool(center_setting.value)
    return Network(gamma=values["gamma"], tau=values["tau"], alpha=alpha, branch=branch,
                   attention=attention, center=center, sources=sources)


@dataclass(frozen=True)
class TensorRule:
    """A tensor's resolved rule as monomials: init kind and scale, mult, lr, wd, eps, and where each came from."""

    init_kind: str
    init_scale: Monomial | None
    mult: Monomial
    lr: Monomial
    wd: Monomial | None
    eps: Monomial | None
    settings: Mapping[str, Setting]


def _where(optimizer: str, sections: list[str], missing: list[str]) -> str:
    """Where the missing settings may be written, for the error's hint."""
    own = [k for k in missing if k in OWN_SECTION_ONLY.get(optimizer, ())]
    if own:
        return (f" in section {' / '.join(sections)}: {optimizer} does not read {', '.join(own)} from the common "
                "part, whose rates are written for steps that do not scale with the weights (see "
                f"'mupdsl explain mup_{optimizer} --optimizer {optimizer}')")
    return f" (in the common part or in section {' / '.join(sections)})" if optimizer not in ("sgd", "adam") else ""


def tensor_rule(spec: Spec, optimizer: str, name: TensorNames, role: str, net: Network | None = None,
                residual: bool = False) -> TensorRule:
    """Resolve and fold the rule of one tensor; raises SpecError naming the tensor if a required key is missing."""
    settings = resolve_settings(spec, optimizer, name, role, residual)
    missing = missing_keys(settings)
    if missing:
        by = trained_by(spec, optimizer, name, role, residual)
        sections = [s for s in SECTION_RANK[by] if s != "all"]
        raise SpecError(
            f"no rule decides {', '.join(missing)} for "
            + (f"tensor '{name if isinstance(name, str) else name[0]}' (role {role}" if name is not None
               else f"role '{role}' (") + f", optimizer {optimizer}"
            + (f", trained by its fallback {by}" if by != optimizer else "") + ")",
            SourcePos(spec.path, 0, 0),
            hint=f"add a rule for role '{role}' or a 'default {{ … }}' rule that sets {', '.join(missing)}"
                 + _where(by, sections, missing),
        )
    net = net or network(spec, optimizer)
    lookup = _lookup(spec, {"gamma": net.gamma, "alpha": Monomial.const(float(net.alpha))})

    def fold(key: str) -> Monomial | None:
        setting = settings.get(key)
        return None if setting is None else to_monomial(setting.value, lookup)

    init: Init = settings["init"].value
    scale = to_monomial(init.scale, lookup) if init.scale is not None else None
    return TensorRule(init_kind=init.kind, init_scale=scale, mult=fold("mult"), lr=fold("lr"),
                      wd=fold("wd"), eps=fold("eps"), settings=settings)


__all__ = [
    "NETWORK_KEYS", "SECTION_RANK", "TENSOR_KEYS", "GlobMatcher", "Network", "TensorRule", "glob_matcher",
    "glob_problem", "most_specific_rule", "trained_by",
    "network", "network_setting",
    "resolve_settings", "rule_matches", "tensor_rule",
]
