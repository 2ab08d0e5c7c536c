"""From the parse tree of one ``.param`` file to what it says: sections, rules, settings, hyperparameters.

Everything a file can get wrong after it parses, within the file, is caught here with its position: unknown
roles, keys and variables (with "did you mean"), bad globs, duplicate settings, expressions over the limits.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from lark import Token, Tree

from .errors import SourcePos, SpecError, did_you_mean
from .limits import MAX_EXPR_TOKENS, MAX_GLOB_CHARS, MAX_NESTING, parse_number
from .model import (
    ATTENTION_OWN_SCALES, INIT_KINDS, MUON_FALLBACKS, NETWORK_KEYS, NO_EPS, OPTIMIZERS, ROLES, TENSOR_KEYS, Expr, Init,
    Selector, Setting,
)
from .resolve import glob_problem
from .syntax import Broken, division_problem, number_error, too_deep, too_long

_NOT_GLOB_CHAR = re.compile(r"[^A-Za-z0-9_.*?\[\]!\-]")


@dataclass
class SpecFile:
    """What one spec file says, before ``extends`` is followed and values are checked."""

    path: str
    source: str
    name: str | None = None
    extends: tuple[str, SourcePos] | None = None
    hypers: list[tuple[str, Expr, SourcePos]] = field(default_factory=list)
    sets: list[tuple[str, Expr, SourcePos]] = field(default_factory=list)
    rules: list[tuple[Selector, str, dict[str, Setting], SourcePos]] = field(default_factory=list)
    network: list[tuple[str, Setting]] = field(default_factory=list)
    fallback: tuple[str, SourcePos] | None = None
    """``fallback = NAME`` of the ``muon`` section: the optimizer of the tensors Muon does not own."""


def _one_line(text: str, limit: int = 80) -> str:
    """Source text quoted in a hint: on one line, shortened."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"



class Reader:
    """Walks the parse tree of one file to a :class:`SpecFile`, with every meaning check located."""

    def __init__(self, path: str, source: str, checked: bool = False) -> None:
        self.path = path
        self.source = source
        self.file = SpecFile(path=path, source=source)
        self.checked = checked
        """Whether the parser already enforced the expression limits (nesting, length)."""
        self.network_seen: dict[str, dict[str, SourcePos]] = {}
        """Network settings already set in this file, by section, with where."""

    # positions ------------------------------------------------------------------------------------------
    def pos(self, node: Tree | Token | Expr | Broken) -> SourcePos:
        if isinstance(node, Token):
            return SourcePos(self.path, node.line, node.column, node.column + max(1, len(str(node))))
        if isinstance(node, (Expr, Broken)):   # an expression the fast parser built
            return node.pos
        meta = node.meta
        end = meta.end_column if meta.end_line == meta.line else None
        return SourcePos(self.path, meta.line, meta.column, end)

    def text(self, node: Tree | Token | Expr | Broken) -> str:
        if isinstance(node, Token):
            return str(node)
        if isinstance(node, (Expr, Broken)):
            return node.text
        return self.source[node.meta.start_pos:node.meta.end_pos]

    def error(self, message: str, node: Tree | Token | SourcePos, hint: str | None = None, **kw) -> SpecError:
        pos = node if isinstance(node, SourcePos) else self.pos(node)
        return SpecError(message, pos, hint=hint, source=self.source, **kw)

    # statements -----------------------------------------------------------------------------------------
    def read(self, tree: Tree) -> SpecFile:
        f = self.file
        items = tree.children
        for index, item in enumerate(items):
            items[index] = None   # each statement's subtree is freed once read: a large file's peak memory is lower
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
                if child.data == "setting" and name == "muon" and str(child.children[0]) == "fallback":
                    self.fallback(child)
                    continue
                if child.data == "setting" and str(child.children[0]) == "fallback":
                    raise self.error(f"'fallback' cannot stand in section '{name}'", child.children[0],
                                     hint=f"it names Muon's fallback optimizer, so it stands only in section muon: "
                                          f"muon {{ {_one_line(self.text(child))} }}")
                if child.data == "setting":
                    raise self.error(f"a setting cannot stand directly in section '{name}'", child.children[0],
                                     hint=f"put it in a rule: {name} {{ hidden {{ {_one_line(self.text(child))} }} }}"
                                     + ("; only 'fallback = adamw' stands in section muon" if name == "muon" else ""))
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

    def fallback(self, setting: Tree) -> None:
        """``fallback = NAME`` in the ``muon`` section."""
        key_token, value = setting.children
        if self.file.fallback is not None:
            raise self.error("'fallback' is set twice", key_token, notes=[("first set here", self.file.fallback[1])])
        name = value.name if isinstance(value, Expr) and value.kind == "var" else (
            str(value.children[0]) if isinstance(value, Tree) and value.data == "var" else None)
        if name not in MUON_FALLBACKS:
            hint = (did_you_mean(name, MUON_FALLBACKS) if name else None) or \
                f"the tensors Muon does not own are trained by one of: {', '.join(MUON_FALLBACKS)}"
            raise self.error(f"'{self.text(value)}' cannot be Muon's fallback optimizer", value, hint=hint)
        self.file.fallback = (name, self.pos(key_token))

    def network_block(self, block: Tree, section: str) -> None:
        seen = self.network_seen.setdefault(section, {})   # across the file's network blocks of this section
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
                where = "" if section == "all" else f" in section '{section}'"
                raise self.error(f"'{key}' is set twice{where}", key_token, notes=[("first set here", seen[key])],
                                 hint="a spec that extends this one may set it again; within one file, set it once")
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
            if key == "eps" and section in NO_EPS:
                raise self.error(f"{section} has no ε: a rule in section '{section}' cannot set 'eps'", key_token,
                                 hint="remove it; ε is Adam's (adam, adamw) and Adafactor's (its ε₁)")
            if key == "muon" and section != "muon":
                raise self.error("'muon' (whether Muon trains a tensor) belongs in section muon", key_token,
                                 hint="write muon { \"head.weight\" { muon = false } }")
            if key in settings:
                raise self.error(f"'{key}' is set twice in this rule", key_token,
                                 notes=[("first set here", settings[key].pos)])
            value_node = child.children[1]
            if key == "muon":
                value = self.boolean(value_node)
            else:
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
        if len(text) > MAX_GLOB_CHARS:
            raise self.error(f"name glob too long ({len(text)} characters)", pos,
                             hint=f"a name glob is at most {MAX_GLOB_CHARS} characters")

        def at(i: int) -> SourcePos:
            return SourcePos(self.path, pos.line, pos.col + 1 + i, pos.col + 2 + i)

        bad = _NOT_GLOB_CHAR.search(text)
        if bad is not None:
            raise self.error(f"bad character {bad.group()!r} in name glob", at(bad.start()),
                             hint="globs use names, dots, * (one name part), ** (any parts), ? and [abc]")
        problem = glob_problem(text)
        if problem is not None:
            i, message = problem
            if message.startswith("unclosed"):
                raise self.error(message, pos, hint="close the character class with ']'")
            raise self.error(message, at(i), hint="a class is [abc], [a-z] or [!abc] (not one of them)")
        if text.startswith(".") or text.endswith(".") or ".." in text:
            raise self.error("empty name part in glob", pos, hint="dots separate name parts: blocks.*.weight")
        if "***" in text:
            raise self.error("'***' in name glob", pos, hint="use * for one name part, ** for any number")
        return text

    def boolean(self, node: Tree | Expr | Broken) -> bool:
        if isinstance(node, Tree) and node.data == "var" and str(node.children[0]) in ("true", "false"):
            return str(node.children[0]) == "true"
        if isinstance(node, Expr) and node.kind == "var" and node.name in ("true", "false"):
            return node.name == "true"
        raise self.error("expected true or false", node)

    def plain_expr(self, node: Tree | Expr | Broken, key: str) -> Expr:
        if isinstance(node, Tree) and node.data == "call":
            raise self.error(f"'{key}' takes an expression, not a call", node,
                             hint="calls such as normal(std = …) are for init")
        expr = self.expr(node)
        bad = expr.names() & set(INIT_KINDS)
        if key == "attention":
            bad -= set(ATTENTION_OWN_SCALES)   # the model's own logit scale (docs/language.md)
        if bad:
            raise self.error(f"'{sorted(bad)[0]}' is an init form; it cannot appear in '{key}'", node)
        return expr

    def init(self, node: Tree | Expr | Broken) -> Init:
        text = self.text(node)
        if isinstance(node, Tree) and node.data == "call":
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
        """The Expr of a parse (sub)tree, built bottom-up without recursion (or the one the fast parser built)."""
        if isinstance(node, Expr):
            return node
        if isinstance(node, Broken):
            raise node.error
        if not self.checked:
            self.check_size(node)
        stack: list[tuple[Tree | Token, bool]] = [(node, False)]
        out: list[Expr] = []
        while stack:
            n, ready = stack.pop()
            if isinstance(n, Token):  # a bare exponent token inlined by the grammar
                out.append(self.leaf(n))
            elif n.data == "num" or n.data == "var":
                out.append(self.leaf(n.children[0], pos=self.pos(n)))
            elif not ready:
                stack.append((n, True))
                stack.extend((child, False) for child in reversed(n.children))
            else:
                k = len(n.children)
                args = out[len(out) - k:]
                del out[len(out) - k:]
                out.append(self.combine(n, args))
        return out[0]

    def check_size(self, node: Tree | Token) -> None:
        """The expression limits on a tree the fast parser did not read: at most MAX_NESTING levels of parentheses
        and unary minus, at most MAX_EXPR_TOKENS tokens."""
        count = 0
        stack: list[tuple[Tree | Token, int]] = [(node, 0)]
        while stack:
            n, level = stack.pop()
            if isinstance(n, Token):
                count += 1
                continue
            kind = n.data
            if kind in ("group", "neg"):
                level += 1
                if level > MAX_NESTING:
                    raise too_deep(self.pos(n), self.source)
            count += 2 if kind == "group" else 1
            if count > MAX_EXPR_TOKENS:
                start = self.pos(node)
                raise too_long(SourcePos(self.path, start.line, start.col, start.col + 1), self.source)
            if kind not in ("num", "var"):
                stack.extend((child, level) for child in reversed(n.children))

    def combine(self, node: Tree, args: list[Expr]) -> Expr:
        kind = node.data
        pos, meta = self.pos(node), node.meta
        span = (meta.start_pos, meta.end_pos)
        if kind == "group":
            return args[0].regrouped(pos, self.source, span)
        if kind == "div":
            problem = division_problem(args[0], args[1], self.source)
            if problem is not None:
                raise problem
        return Expr(kind, pos, None, None, None, tuple(args), source=self.source, span=span)

    def leaf(self, token: Token, pos: SourcePos | None = None) -> Expr:
        pos = pos or self.pos(token)
        if token.type == "NUMBER":
            try:
                value = parse_number(str(token))
            except ValueError as exc:
                raise number_error(exc, pos, self.source) from None
            return Expr("num", pos, str(token), value)
        text = str(token)
        return Expr("var", pos, text, None, text)


__all__ = ["Reader", "SpecFile"]
