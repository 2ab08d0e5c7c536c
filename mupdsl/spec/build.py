"""From parse tree to typed :class:`~mupdsl.spec.model.Spec`: meaning checks, ``extends``, hyperparameters.

Everything a file can get wrong after it parses is caught here, each with its position: unknown roles,
keys and variables (with "did you mean"), bad globs, duplicate rules and settings, division by zero,
``extends`` cycles and missing files, and overrides of hyperparameters nobody declared.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Mapping

from lark import Token, Tree

from .errors import SourcePos, SpecError, did_you_mean
from .expr import Monomial, to_monomial
from .model import (
    ATTENTION_OWN_SCALES, INIT_KINDS, NETWORK_KEYS, NETWORK_SIZE_VARIABLES, OPTIMIZERS, ROLES, SIZE_VARIABLES, TENSOR_KEYS,
    Expr, Hyper, Init, NetworkSetting, Rule, Selector, Setting, Spec,
)
from .resolve import network
from .syntax import parse

PRESET_DIR = (Path(__file__).resolve().parent.parent / "presets").resolve()
_GLOB_CHARS = re.compile(r"[A-Za-z0-9_.*?\[\]!\-]")


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.param"))


def find_spec_file(name_or_path: str) -> Path | None:
    """A path that exists, or the preset of that name."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    if "/" not in name_or_path and not name_or_path.endswith(".param"):
        preset = PRESET_DIR / f"{name_or_path}.param"
        if preset.is_file():
            return preset
    return None


def load_spec(name_or_path: str | Path, overrides: Mapping[str, float | str | Fraction] | None = None,
              **kw_overrides: float) -> Spec:
    """Load a spec by path or preset name, apply hyperparameter overrides, and check it.

    Raises :class:`SpecError` for any problem, located in the file (or at ``--set`` for a bad override).
    """
    target = str(name_or_path)
    path = find_spec_file(target)
    if path is None:
        hint = did_you_mean(Path(target).stem, preset_names()) or f"presets: {', '.join(preset_names())}"
        raise SpecError(f"no such spec file or preset '{target}'", SourcePos(target, 0, 0), hint=hint)
    spec = _load_cached(path)
    merged = dict(overrides or {})
    merged.update(kw_overrides)
    if merged:
        spec = apply_overrides(spec, merged)
    return spec


def apply_overrides(spec: Spec, overrides: Mapping[str, float | str | Fraction]) -> Spec:
    """Set hyperparameters by name (as ``--set name=value`` does); each name must be declared."""
    hypers = dict(spec.hypers)
    for name, raw in overrides.items():
        where = SourcePos(f"--set {name}={raw}", 0, 0)
        if name not in hypers:
            hint = did_you_mean(name, hypers) or f"declared: {', '.join(sorted(hypers)) or 'none'}"
            raise SpecError(f"'{name}' is not a hyperparameter of spec '{spec.name}'", where, hint=hint)
        try:
            value = raw if isinstance(raw, Fraction) else Fraction(str(raw).strip())
        except (ValueError, ZeroDivisionError):
            raise SpecError(f"'{raw}' is not a number", where, hint="write a number: 0.1, 1e-3 or 1/2") from None
        hypers[name] = hypers[name].model_copy(update={"value": value, "pos": where})
    spec = spec.model_copy(update={"hypers": hypers})
    _check_values(spec, {})
    return spec


# ---------------------------------------------------------------------------------------------------------
# One file


@dataclass
class _File:
    path: str
    source: str
    name: str | None = None
    extends: tuple[str, SourcePos] | None = None
    hypers: list[tuple[str, Expr, SourcePos]] = field(default_factory=list)
    sets: list[tuple[str, Expr, SourcePos]] = field(default_factory=list)
    rules: list[tuple[Selector, str, dict[str, Setting], SourcePos]] = field(default_factory=list)
    network: list[tuple[str, Setting]] = field(default_factory=list)


def _read(path: Path) -> str:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise SpecError(f"cannot read spec file: {exc.strerror}", SourcePos(str(path), 0, 0)) from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        before = data[: exc.start].decode("utf-8", errors="replace")
        line = before.count("\n") + 1
        col = len(before) - (before.rfind("\n") + 1) + 1
        raise SpecError("the file is not UTF-8 text", SourcePos(str(path), line, col, col + 1),
                        hint="save the spec as UTF-8") from None


_LOADED: dict[tuple[Path, str], tuple[tuple[tuple[Path, tuple[int, int] | None], ...], Spec]] = {}


def _stamp(path: Path) -> tuple[int, int] | None:
    """When and how large ``path`` was written; None if it cannot be read (never equal: the file is read again,
    and reading it reports the problem at its place)."""
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size


def _load_cached(path: Path) -> Spec:
    """:func:`_load`, remembered per file while neither it nor any file it extends changes (a sweep or a
    coordinate check loads the same spec many times; a Spec is immutable)."""
    key = (path.resolve(), _display(path))
    hit = _LOADED.get(key)
    if hit is not None and all(stamp is not None and _stamp(f) == stamp for f, stamp in hit[0]):
        return hit[1]
    read: list[tuple[Path, tuple[int, int] | None]] = []
    spec = _load(path, (), read)
    if len(_LOADED) > 256:
        _LOADED.clear()
    _LOADED[key] = (tuple(read), spec)
    return spec


def _load(path: Path, stack: tuple[Path, ...], read: list | None = None) -> Spec:
    resolved = path.resolve()
    if read is not None:
        read.append((resolved, _stamp(resolved)))  # stamped before reading: a later edit misses the cache
    text = _read(path)
    display = _display(path)
    try:
        tree = parse(text, display)
        parsed = _Reader(display, text).read(tree)
    except RecursionError:
        raise SpecError("expression nested too deeply", SourcePos(display, 1, 1), source=text) from None
    parent: Spec | None = None
    if parsed.extends is not None:
        target, pos = parsed.extends
        parent_path = _extends_path(target, path)
        if parent_path is None:
            hint = did_you_mean(Path(target).stem, preset_names()) or f"presets: {', '.join(preset_names())}"
            raise SpecError(f"cannot find spec '{target}' to extend", pos, source=text, hint=hint)
        chain = stack + (resolved,)
        if parent_path.resolve() in chain:
            loop = chain[chain.index(parent_path.resolve()):] + (parent_path.resolve(),)
            cycle = " -> ".join(p.name for p in loop)
            raise SpecError(f"extends cycle: {cycle}", pos, source=text,
                            hint="a spec cannot extend itself, directly or through others")
        parent = _load(parent_path, chain, read)
    return _merge(parsed, parent)


def _display(path: Path) -> str:
    """The path as a person would type it: relative to the working directory when below it."""
    try:
        rel = os.path.relpath(path.resolve())
    except ValueError:
        return str(path)
    return rel if not rel.startswith("..") else str(path.resolve())


def _extends_path(target: str, child: Path) -> Path | None:
    if target.endswith(".param") or "/" in target:
        candidate = (child.parent / target) if not Path(target).is_absolute() else Path(target)
        return candidate if candidate.is_file() else None
    return find_spec_file(target)


def _merge(f: _File, parent: Spec | None) -> Spec:
    hypers: dict[str, Hyper] = dict(parent.hypers) if parent else {}
    own: dict[str, SourcePos] = {}
    for name, expr, pos in f.hypers:
        if name in own:
            raise SpecError(f"hyperparameter '{name}' is declared twice", pos, source=f.source,
                            notes=[("first declared here", own[name])])
        if name in hypers:
            raise SpecError(f"hyperparameter '{name}' is already declared by the spec this one extends", pos,
                            source=f.source, hint=f"write 'set {name} = …' to change its value",
                            notes=[("declared here", hypers[name].declared_at)])
        if name in SIZE_VARIABLES or name in NETWORK_KEYS or name in INIT_KINDS:
            raise SpecError(f"'{name}' is a reserved name and cannot be a hyperparameter", pos, source=f.source)
        value = _constant(expr, hypers, f.source)
        hypers[name] = Hyper(name=name, value=value, pos=pos, declared_at=pos)
        own[name] = pos
    for name, expr, pos in f.sets:
        if name not in hypers:
            hint = did_you_mean(name, hypers) or "declare it with 'hyper NAME = value'"
            raise SpecError(f"'set' of undeclared hyperparameter '{name}'", pos, source=f.source, hint=hint)
        hypers[name] = hypers[name].model_copy(update={"value": _constant(expr, hypers, f.source), "pos": pos})

    base = len(parent.rules) if parent else 0
    rules = list(parent.rules) if parent else []
    seen: dict[tuple[str, Selector], SourcePos] = {}
    for i, (selector, section, settings, pos) in enumerate(f.rules):
        key = (section, selector)
        if key in seen:
            where = "" if section == "all" else f" in section '{section}'"
            raise SpecError(f"duplicate rule '{selector}'{where}", pos, source=f.source,
                            hint="merge the two blocks into one", notes=[("first rule here", seen[key])])
        seen[key] = pos
        rules.append(Rule(selector=selector, section=section, settings=settings, pos=pos, order=base + i))
    nbase = len(parent.network) if parent else 0
    network = list(parent.network) if parent else []
    network += [NetworkSetting(section=s, setting=st, order=nbase + i) for i, (s, st) in enumerate(f.network)]
    spec = Spec(
        name=f.name or Path(f.path).stem,
        path=f.path,
        chain=(f.path,) + (parent.chain if parent else ()),
        hypers=hypers,
        rules=tuple(rules),
        network=tuple(network),
    )
    _check_values(spec, {f.path: f.source})
    return spec


def _constant(expr: Expr, hypers: Mapping[str, Hyper], source: str) -> Fraction:
    def lookup(name: str, node: Expr) -> Monomial:
        if name in hypers:
            return Monomial.const(float(hypers[name].value))
        hint = did_you_mean(name, hypers) or "a hyperparameter's value is a number or uses earlier hyperparameters"
        raise SpecError(f"unknown name '{name}' in hyperparameter value", node.pos, source=source, hint=hint)

    monomial = to_monomial(expr, lookup, source)
    if not math.isfinite(monomial.coef):
        raise SpecError("value is too large for a float", expr.pos, source=source)
    return Fraction(monomial.coef).limit_denominator(10**12) if monomial.coef != 0 else Fraction(0)


def _check_values(spec: Spec, sources: Mapping[str, str]) -> None:
    """Fold every expression once with symbolic sizes: catches unknown names and division by zero."""
    hyper = {n: Monomial.const(float(h.value)) for n, h in spec.hypers.items()}

    def source_of(pos: SourcePos) -> str | None:
        return sources.get(pos.path) or _try_read(pos.path)

    def make_lookup(allowed: tuple[str, ...], context: str, src: str | None):
        def lookup(name: str, node: Expr) -> Monomial:
            if name in hyper:
                return hyper[name]
            if name in allowed:
                return Monomial.var(name)
            if name in SIZE_VARIABLES:
                raise SpecError(f"'{name}' is a per-tensor size and cannot be used in {context}", node.pos,
                                source=src, hint=f"{context} may use: {', '.join(allowed)}")
            hint = did_you_mean(name, tuple(hyper) + allowed) or (
                f"known: {', '.join(allowed)}; hyperparameters: {', '.join(sorted(hyper)) or 'none'}")
            raise SpecError(f"unknown name '{name}'", node.pos, source=src, hint=hint)
        return lookup

    alphas: dict[str, Monomial] = {}
    for late in (False, True):  # branch and attention may use alpha, so they are checked once it is known
        if late:
            alphas = {opt: Monomial.const(float(network(spec, opt).alpha)) for opt in OPTIMIZERS}
        for ns in spec.network:
            key, value = ns.setting.key, ns.setting.value
            if not isinstance(value, Expr) or (key in ("branch", "attention")) != late:
                continue
            src = source_of(ns.setting.pos)
            allowed = NETWORK_SIZE_VARIABLES
            if late:
                hyper["alpha"] = alphas["sgd" if ns.section == "all" else ns.section]
                allowed += ("alpha",)
            if key == "attention":
                allowed += ATTENTION_OWN_SCALES
            monomial = to_monomial(value, make_lookup(allowed, f"network '{key}'", src), src)
            if not math.isfinite(monomial.coef):
                raise SpecError("value is too large for a float", value.pos, source=src)
            own = [name for name in ATTENTION_OWN_SCALES if name in monomial.powers]
            if own and (len(own) > 1 or monomial.powers[own[0]] != 1):
                raise SpecError("attention may name the model's own scale once, as a factor: keep or base",
                                value.pos, source=src,
                                hint="write `attention = keep`, or `base * base_d_head / d_head` (µP)")
            if key in ("alpha", "tau") and not monomial.is_const:
                raise SpecError(f"network '{key}' must be a constant", ns.setting.pos, source=src,
                                hint="it may use numbers and hyperparameters, not sizes")
    tensor_names = SIZE_VARIABLES + ("gamma", "alpha")
    for rule in spec.rules:
        hyper["alpha"] = alphas["sgd" if rule.section == "all" else rule.section]
        for setting in rule.settings.values():
            src = source_of(setting.pos)
            expr = setting.value.scale if isinstance(setting.value, Init) else setting.value
            if isinstance(expr, Expr):
                folded = to_monomial(expr, make_lookup(tensor_names, "a tensor rule", src), src)
                if not math.isfinite(folded.coef):
                    raise SpecError("value is too large for a float", expr.pos, source=src)


def _try_read(path: str) -> str | None:
    try:
        return Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None


# ---------------------------------------------------------------------------------------------------------
# Tree walking


class _Reader:
    def __init__(self, path: str, source: str) -> None:
        self.path = path
        self.source = source
        self.file = _File(path=path, source=source)

    # positions ------------------------------------------------------------------------------------------
    def pos(self, node: Tree | Token) -> SourcePos:
        if isinstance(node, Token):
            return SourcePos(self.path, node.line, node.column, node.column + max(1, len(str(node))))
        meta = node.meta
        end = meta.end_column if meta.end_line == meta.line else None
        return SourcePos(self.path, meta.line, meta.column, end)

    def text(self, node: Tree | Token) -> str:
        if isinstance(node, Token):
            return str(node)
        return self.source[node.meta.start_pos:node.meta.end_pos]

    def error(self, message: str, node: Tree | Token | SourcePos, hint: str | None = None, **kw) -> SpecError:
        pos = node if isinstance(node, SourcePos) else self.pos(node)
        return SpecError(message, pos, hint=hint, source=self.source, **kw)

    # statements -----------------------------------------------------------------------------------------
    def read(self, tree: Tree) -> _File:
        f = self.file
        for item in tree.children:
            if isinstance(item, Token):
                continue
            kind = item.data
            if kind == "spec_name":
                if f.name is not None:
                    raise self.error("the spec is named twice", item)
                f.name = str(item.children[0])
            elif kind == "extends":
                if f.extends is not None:
                    raise self.error("a spec extends at most one other spec", item,
                                     hint="chain them: let the parent extend the grandparent")
                if f.rules or f.hypers or f.sets or f.network:
                    raise self.error("'extends' must come before hyperparameters and rules", item)
                token = item.children[0]
                target = str(token)[1:-1] if token.type == "STRING" else str(token)
                f.extends = (target, self.pos(token))
            elif kind == "hyper":
                f.hypers.append((str(item.children[0]), self.expr(item.children[1]), self.pos(item.children[0])))
            elif kind == "set":
                f.sets.append((str(item.children[0]), self.expr(item.children[1]), self.pos(item.children[0])))
            elif kind == "block":
                self.top_block(item)
        return f

    def head(self, block: Tree) -> tuple[list[Token], str | None, Tree]:
        """The names and the glob (checked) of a block head."""
        head = block.children[0]
        names = [t for t in head.children if t.type == "NAME"]
        globs = [t for t in head.children if t.type == "STRING"]
        return names, (self.glob(globs[0]) if globs else None), head

    def top_block(self, block: Tree) -> None:
        names, glob, head = self.head(block)
        name = str(names[0]) if len(names) == 1 and glob is None else None
        if name in OPTIMIZERS:
            for child in block.children[1:]:
                if isinstance(child, Token):
                    continue
                if child.data == "setting":
                    raise self.error(f"a setting cannot stand directly in section '{name}'", child.children[0],
                                     hint=f"put it in a rule: {name} {{ hidden {{ {self.text(child)} }} }}")
                cnames, cglob, chead = self.head(child)
                cname = str(cnames[0]) if len(cnames) == 1 and cglob is None else None
                if cname in OPTIMIZERS:
                    raise self.error(f"section '{cname}' cannot be nested in section '{name}'", chead)
                if cname == "network":
                    self.network_block(child, name)
                else:
                    self.rule_block(child, name)
        elif name == "network":
            self.network_block(block, "all")
        else:
            self.rule_block(block, "all")

    def network_block(self, block: Tree, section: str) -> None:
        seen: dict[str, SourcePos] = {}
        for child in block.children[1:]:
            if isinstance(child, Token):
                continue
            if child.data != "setting":
                raise self.error("'network' holds settings only (gamma, tau, alpha, branch, attention, center)",
                                 child.children[0])
            key_token = child.children[0]
            key = str(key_token)
            if key not in NETWORK_KEYS:
                hint = did_you_mean(key, NETWORK_KEYS) or f"network settings: {', '.join(NETWORK_KEYS)}"
                if key in TENSOR_KEYS:
                    hint = f"'{key}' is a per-tensor setting; put it in a rule such as hidden {{ … }}"
                raise self.error(f"unknown network setting '{key}'", key_token, hint=hint)
            if key in seen:
                raise self.error(f"'{key}' is set twice", key_token, notes=[("first set here", seen[key])])
            seen[key] = self.pos(key_token)
            value_node = child.children[1]
            if key == "center":
                value: Expr | bool = self.boolean(value_node)
            else:
                value = self.plain_expr(value_node, key)
            self.file.network.append((section, Setting(key=key, value=value, pos=self.pos(key_token))))

    def rule_block(self, block: Tree, section: str) -> None:
        names, glob, head = self.head(block)
        residual = bool(names) and str(names[0]) == "residual"
        if residual:
            names = names[1:]
        if len(names) > 1:
            raise self.error(f"unexpected name '{names[1]}' in a rule head", names[1],
                             hint="a rule head is [residual] [ROLE] [\"glob\"], e.g. residual hidden \"blocks.*\"")
        role: str | None = None
        if names:
            name = str(names[0])
            if name == "default" and glob is None and not residual:
                role = None
            elif name in ROLES:
                role = name
            else:
                if name in OPTIMIZERS or name == "network":
                    raise self.error(f"'{name}' cannot be nested here", names[0],
                                     hint="sections and 'network' stand at the top level (network may also be in a section)")
                options = ROLES + ("default", "network", "residual") + (OPTIMIZERS if section == "all" else ())
                hint = did_you_mean(name, options) or f"roles: {', '.join(ROLES)}; or 'default', 'residual', or a quoted name glob"
                raise self.error(f"unknown role '{name}'", names[0], hint=hint)
        settings: dict[str, Setting] = {}
        for child in block.children[1:]:
            if isinstance(child, Token):
                continue
            if child.data != "setting":
                raise self.error("rules cannot be nested", child.children[0],
                                 hint="write each rule as its own block at the top level or in a section")
            key_token = child.children[0]
            key = str(key_token)
            if key not in TENSOR_KEYS:
                hint = did_you_mean(key, TENSOR_KEYS) or f"tensor settings: {', '.join(TENSOR_KEYS)}"
                if key in NETWORK_KEYS:
                    hint = f"'{key}' is a network setting; put it in network {{ … }}"
                raise self.error(f"unknown tensor setting '{key}'", key_token, hint=hint)
            if key in settings:
                raise self.error(f"'{key}' is set twice in this rule", key_token,
                                 notes=[("first set here", settings[key].pos)])
            value_node = child.children[1]
            value = self.init(value_node) if key == "init" else self.plain_expr(value_node, key)
            settings[key] = Setting(key=key, value=value, pos=self.pos(key_token))
        if not settings:
            raise self.error("empty rule", head, hint="give it settings, e.g. { lr = eta0 }, or remove it")
        self.file.rules.append((Selector(role=role, glob=glob, residual=residual), section, settings, self.pos(head)))

    # values ---------------------------------------------------------------------------------------------
    def glob(self, token: Token) -> str:
        text = str(token)[1:-1]
        pos = self.pos(token)
        if not text:
            raise self.error("empty name glob", pos, hint='a glob names tensors, e.g. "blocks.*.attn.q.weight"')
        depth = 0
        for i, ch in enumerate(text):
            here = SourcePos(self.path, pos.line, pos.col + 1 + i, pos.col + 2 + i)
            if not _GLOB_CHARS.fullmatch(ch):
                raise self.error(f"bad character {ch!r} in name glob", here,
                                 hint="globs use names, dots, * (one name part), ** (any parts), ? and [abc]")
            if ch == "[":
                if depth:
                    raise self.error("'[' inside a character class", here)
                depth = 1
            elif ch == "]":
                if not depth:
                    raise self.error("']' without a matching '['", here)
                depth = 0
        if depth:
            raise self.error("unclosed '[' in name glob", pos, hint="close the character class with ']'")
        if text.startswith(".") or text.endswith(".") or ".." in text:
            raise self.error("empty name part in glob", pos, hint="dots separate name parts: blocks.*.weight")
        if "***" in text:
            raise self.error("'***' in name glob", pos, hint="use * for one name part, ** for any number")
        return text

    def boolean(self, node: Tree) -> bool:
        if isinstance(node, Tree) and node.data == "var" and str(node.children[0]) in ("true", "false"):
            return str(node.children[0]) == "true"
        raise self.error("expected true or false", node)

    def plain_expr(self, node: Tree, key: str) -> Expr:
        if node.data == "call":
            raise self.error(f"'{key}' takes an expression, not a call", node,
                             hint="calls such as normal(std = …) are for init")
        expr = self.expr(node)
        bad = expr.names() & set(INIT_KINDS)
        if key == "attention":
            bad -= set(ATTENTION_OWN_SCALES)   # the model's own logit scale (docs/language.md)
        if bad:
            raise self.error(f"'{sorted(bad)[0]}' is an init form; it cannot appear in '{key}'", node)
        return expr

    def init(self, node: Tree) -> Init:
        text = self.text(node)
        if node.data == "call":
            name_token = node.children[0]
            name = str(name_token)
            kwargs = {}
            for kw in node.children[1:]:
                if kw is None:
                    continue
                kname = str(kw.children[0])
                if kname in kwargs:
                    raise self.error(f"argument '{kname}' given twice", kw.children[0])
                kwargs[kname] = (kw.children[0], self.expr(kw.children[1]))
            wanted = {"normal": "std", "uniform": "std", "const": "value"}
            if name not in wanted:
                hint = did_you_mean(name, wanted) or ("init forms: normal(std = …), uniform(std = …), "
                                                      "const(value = …), zero, keep [* …], base [* …]")
                raise self.error(f"unknown init '{name}'", name_token, hint=hint)
            arg = wanted[name]
            for kname, (ktoken, _) in kwargs.items():
                if kname != arg:
                    raise self.error(f"{name}() takes '{arg}', not '{kname}'", ktoken, hint=f"write {name}({arg} = …)")
            if arg not in kwargs:
                raise self.error(f"{name}() needs '{arg} = …'", node, hint=f"write {name}({arg} = …)")
            scale = kwargs[arg][1]
            self.no_init_words(scale)
            return Init(kind=name, scale=scale, text=text)
        expr = self.expr(node)
        if expr.kind == "var" and expr.name in ("zero", "keep", "base"):
            return Init(kind=expr.name, text=text)
        if expr.kind == "mul":
            left, right = expr.args
            for word, factor in ((left, right), (right, left)):
                if word.kind == "var" and word.name in ("keep", "base"):
                    self.no_init_words(factor)
                    return Init(kind=word.name, scale=factor, text=text)
        raise self.error("not an init form", node,
                         hint="init is normal(std = …), uniform(std = …), const(value = …), zero, keep [* …] or "
                              "base [* …]")

    def no_init_words(self, expr: Expr) -> None:
        bad = expr.names() & set(INIT_KINDS)
        if bad:
            raise self.error(f"'{sorted(bad)[0]}' cannot appear inside an init's scale", expr.pos)

    # expressions ----------------------------------------------------------------------------------------
    def expr(self, node: Tree | Token) -> Expr:
        if isinstance(node, Token):  # a bare exponent token inlined by the grammar
            return self.leaf(node)
        kind = node.data
        pos, text = self.pos(node), self.text(node)
        if kind == "group":
            inner = self.expr(node.children[0])
            return inner.model_copy(update={"text": text, "pos": pos})
        if kind in ("num", "var"):
            return self.leaf(node.children[0], pos=pos)
        args = tuple(self.expr(child) for child in node.children)
        if kind == "div" and args[1].kind == "num":
            power = args[0]
            while power.kind in ("mul", "div"):
                power = power.args[1]
            exponent = power.args[1] if power.kind == "pow" else None
            if exponent is not None and not exponent.text.startswith("("):
                raise self.error(f"ambiguous exponent in '{power.text}/{args[1].text}'", power.pos,
                                 hint=f"'^' binds tighter than '/': write {power.args[0].text}^({exponent.text}/"
                                      f"{args[1].text}) for a fractional power, or ({power.text})/{args[1].text}")
        return Expr(kind=kind, pos=pos, text=text, args=args)

    def leaf(self, token: Token, pos: SourcePos | None = None) -> Expr:
        pos = pos or self.pos(token)
        if token.type == "NUMBER":
            return Expr(kind="num", pos=pos, text=str(token), value=Fraction(str(token)))
        return Expr(kind="var", pos=pos, text=str(token), name=str(token))
