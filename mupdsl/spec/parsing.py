"""Reading ``.param`` text to its parse tree, fast, with Lark's parser as the reference.

:class:`FastParser` is a hand-written recursive-descent parser for ``grammars/param.lark`` that builds exactly the
tree Lark builds (rule names, children, positions: ``tests/test_fuzz.py`` compares them on generated and mutated
specs). It reads a 1 MB spec in a fraction of a second, where Lark's LALR parser in pure Python takes several
seconds. Whenever it does not accept a file, Lark reads it (from the statement before the failing one, in a large
file), so every syntax error message is Lark's (:mod:`mupdsl.spec.syntax`); a statement that uses a keyword
(spec, extends, hyper, set) as a name is read by Lark on its own, since Lark's contextual lexer decides such a word
by its parse state.

Lines are counted by ``\\n`` (the loader turns ``\\r\\n`` and a lone ``\\r`` into ``\\n`` first, as Python's
text mode does); other characters (form feed, U+2028, …) are not line breaks.
"""

from __future__ import annotations

import re
from fractions import Fraction

from lark import Token, Tree, UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken

from .errors import SourcePos, SpecError
from .limits import MAX_EXPR_TOKENS, MAX_NESTING, parse_number
from .model import Expr
from .syntax import (
    KEYWORDS, Broken, division_problem, glued_number_error, lark_parse, number_error, parser, syntax_error, too_deep,
    too_long,
)

SMALL = 64 * 1024
"""Below this many characters a file with a syntax error is read again by Lark in full (a few ms)."""


def parse(text: str, path: str) -> Tree:
    """Parse ``text`` (the content of ``path``) to a Lark tree, or raise a located SpecError."""
    return parse_checked(text, path)[0]


def parse_checked(text: str, path: str, exprs: bool = False) -> tuple[Tree, bool]:
    """:func:`parse`, and whether the expression limits (nesting, length) were checked on the way: the fast
    parser checks them; a tree from Lark has not been.

    ``exprs``: the fast parser builds each expression as an :class:`~mupdsl.spec.model.Expr` at once (what the
    reader would build from its subtree; an expression with a bad number or an ambiguous exponent is a
    :class:`Broken` that raises its error when read), instead of its Lark subtree.
    """
    glued = glued_number_error(text, path)    # never valid; either parser would report it later, elsewhere
    if glued is not None:
        raise glued
    try:
        return FastParser(text, path, exprs).parse(), True
    except Bail:
        pass   # a statement only Lark can read: Lark reads the whole file below
    except Fail as fail:
        if len(text) > SMALL and fail.restart > 0:
            # Lark from the item before the failing one, with everything before it blanked out (newlines kept,
            # so every position is the same): the error costs the size of two statements, not of the file
            blank = "\n".join(" " * len(line) for line in text[: fail.restart].split("\n"))
            try:
                parser().parse(blank + text[fail.restart:])
            except UnexpectedInput as exc:
                raise syntax_error(exc, text, path) from None
    return lark_parse(text, path), False





_TOKEN = re.compile(r"""
    (?P<WS>[\ \t\f\r\n]+)
  | (?P<COMMENT>\#[^\n]*)
  | (?P<NAME>[A-Za-z_][A-Za-z0-9_]*)
  | (?P<NUMBER>(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?)
  | (?P<STRING>"[^"\n]*")
  | (?P<OP>[{}()=^*/+\-;,])
  | (?P<BAD>.)
""", re.VERBOSE | re.DOTALL)


class _Span:
    """The positions of a tree node, as Lark's ``Meta`` holds them, in a fraction of its memory."""

    __slots__ = ("line", "column", "start_pos", "end_line", "end_column", "end_pos", "empty")

    def __init__(self, line, column, start_pos, end_line, end_column, end_pos) -> None:
        self.line, self.column, self.start_pos = line, column, start_pos
        self.end_line, self.end_column, self.end_pos = end_line, end_column, end_pos
        self.empty = False


class Fail(Exception):
    """The fast parser does not accept the text; ``restart`` is where Lark may start reading to find the error."""

    def __init__(self, restart: int) -> None:
        self.restart = restart


class Bail(Exception):
    """Lark reads the whole file: a statement with a keyword used as a name could not be read on its own."""


class FastParser:
    """Recursive descent over ``grammars/param.lark``, building Lark's tree (rule names, children, positions)."""

    def __init__(self, text: str, path: str, exprs: bool = False) -> None:
        self.text, self.path, self.exprs = text, path, exprs
        self.broken: SpecError | None = None
        kinds, values, starts, lines, cols = [], [], [], [], []
        line, line_start = 1, 0
        for m in _TOKEN.finditer(text):
            kind = m.lastgroup
            if kind == "WS":
                value = m.group()
                newlines = value.count("\n")
                if newlines:
                    line += newlines
                    line_start = m.start() + value.rindex("\n") + 1
                continue
            if kind == "COMMENT":
                continue
            value = m.group()
            start = m.start()
            kinds.append(value if kind == "OP" else kind)
            values.append(value)
            starts.append(start)
            lines.append(line)
            cols.append(start - line_start + 1)
        kinds.append("$END")
        values.append("")
        starts.append(len(text))
        lines.append(line)
        cols.append(len(text) - line_start + 1)
        self.kinds, self.values, self.starts, self.lines, self.cols = kinds, values, starts, lines, cols
        self.i = 0
        self.items: list[int] = []
        self.expr_start: int | None = None
        self.keyword_seen = False

    # helpers ------------------------------------------------------------------------------------------------
    def fail(self):
        restart = self.items[-2] if len(self.items) >= 2 else 0
        return Fail(restart)

    def token(self, kind: str) -> Token:
        i = self.i
        if self.kinds[i] != kind:
            raise self.fail()
        value = self.values[i]
        if kind == "NAME" and value in KEYWORDS:
            self.keyword_seen = True   # read as a name here; Lark decides the statement (see parse)
        if self.expr_start is not None and i - self.expr_start >= MAX_EXPR_TOKENS:
            raise self.too_long()
        self.i = i + 1
        start, line, col, n = self.starts[i], self.lines[i], self.cols[i], len(value)
        return Token._future_new(kind, value, start, line, col, line, col + n, start + n)

    def expect(self, kind: str) -> None:
        if self.kinds[self.i] != kind:
            raise self.fail()
        self.i += 1

    def tree(self, data: str, children: list, first: int) -> Tree:
        last = self.i - 1
        n = len(self.values[last])
        return Tree(data, children, _Span(self.lines[first], self.cols[first], self.starts[first],
                                          self.lines[last], self.cols[last] + n, self.starts[last] + n))

    # statements ---------------------------------------------------------------------------------------------
    def parse(self) -> Tree:
        kinds, values = self.kinds, self.values
        items = []
        while True:
            kind = kinds[self.i]
            if kind == "$END":
                break
            self.items.append(self.starts[self.i])
            if kind == ";":
                self.i += 1
                continue
            first = self.i
            self.keyword_seen = False
            before = len(items)
            word = values[first] if kind == "NAME" else None
            if word in KEYWORDS:
                self.i += 1
                if word == "spec":
                    items.append(self.tree("spec_name", [self.token("NAME")], first))
                elif word == "extends":
                    target = self.token("STRING" if kinds[self.i] == "STRING" else "NAME")
                    items.append(self.tree("extends", [target], first))
                else:
                    name = self.token("NAME")
                    self.expect("=")
                    value = self.top_expr()
                    items.append(self.tree("hyper" if word == "hyper" else "set", [name, value], first))
            elif kind in ("NAME", "STRING"):
                items.append(self.block())
            else:
                raise self.fail()
            if self.keyword_seen:
                items[before:] = self.lark_item(first)
        if self.i == 0:   # no item at all (an empty file, or comments only): no position, as Lark
            return Tree("start", items)
        return self.tree("start", items, 0)

    def lark_item(self, first: int) -> list:
        """The statement from token ``first`` to the last one read, as Lark reads it.

        A keyword (spec, extends, hyper, set) used as a name is read as a name or as the keyword depending on the
        state of Lark's LALR parser (its contextual lexer), so Lark reads the statement — on its own, with its
        positions shifted to the file's: a large file costs a statement, not the file.
        """
        last = self.i - 1
        start, end = self.starts[first], self.starts[last] + len(self.values[last])
        line0, col0 = self.lines[first], self.cols[first]

        def line(n: int) -> int:
            return n + line0 - 1

        def col(n_line: int, n_col: int) -> int:
            return n_col + col0 - 1 if n_line == 1 else n_col

        try:
            tree = parser().parse(self.text[start:end])
        except (UnexpectedEOF, UnexpectedToken) as exc:
            if isinstance(exc, UnexpectedEOF) or exc.token.type == "$END":
                raise Bail() from None  # the statement's end is not the file's: Lark reads the whole file
            exc.column, exc.line = col(exc.line, exc.column), line(exc.line)
            exc.pos_in_stream = None if exc.pos_in_stream is None else exc.pos_in_stream + start
            raise syntax_error(exc, self.text, self.path) from None
        except UnexpectedCharacters:   # not expected: the fast lexer read the same characters
            raise Bail() from None
        for node in tree.iter_subtrees():
            m = node.meta
            if not m.empty:
                m.column, m.end_column = col(m.line, m.column), col(m.end_line, m.end_column)
                m.line, m.end_line = line(m.line), line(m.end_line)
                m.start_pos, m.end_pos = m.start_pos + start, m.end_pos + start
            for child in node.children:
                if isinstance(child, Token):
                    child.column, child.end_column = col(child.line, child.column), col(child.end_line,
                                                                                        child.end_column)
                    child.line, child.end_line = line(child.line), line(child.end_line)
                    child.start_pos, child.end_pos = child.start_pos + start, child.end_pos + start
        return tree.children

    def block(self) -> Tree:
        first = self.i
        kinds = self.kinds
        if kinds[first] == "STRING":
            names = [self.token("STRING")]
        else:
            names = [self.token("NAME")]
            while kinds[self.i] == "NAME":
                names.append(self.token("NAME"))
            if kinds[self.i] == "STRING":
                names.append(self.token("STRING"))
        head = self.tree("head", names, first)
        self.expect("{")
        children: list = [head]
        while True:
            kind = kinds[self.i]
            if kind == "}":
                break
            if kind == ";":
                self.i += 1
            elif kind == "NAME" and kinds[self.i + 1] == "=":
                children.append(self.setting())
            elif kind in ("NAME", "STRING"):
                children.append(self.block())
            else:
                raise self.fail()
        self.i += 1
        return self.tree("block", children, first)

    def setting(self) -> Tree:
        first = self.i
        key = self.token("NAME")
        self.expect("=")
        if self.kinds[self.i] == "NAME" and self.kinds[self.i + 1] == "(":
            value = self.call()
        else:
            value = self.top_expr()
        return self.tree("setting", [key, value], first)

    def call(self) -> Tree:
        first = self.i
        children: list = [self.token("NAME")]
        self.expect("(")
        if self.kinds[self.i] != ")":
            while True:
                start = self.i
                name = self.token("NAME")
                self.expect("=")
                children.append(self.tree("kwarg", [name, self.top_expr()], start))
                if self.kinds[self.i] != ",":
                    break
                self.i += 1
        self.expect(")")
        return self.tree("call", children, first)

    # expressions --------------------------------------------------------------------------------------------
    def deeper(self, depth: int) -> int:
        depth += 1
        if depth > MAX_NESTING:
            i = self.i
            n = len(self.values[i])
            raise too_deep(SourcePos(self.path, self.lines[i], self.cols[i], self.cols[i] + n), self.text)
        return depth

    def top_expr(self) -> Tree | Expr | Broken:
        self.expr_start, self.broken = self.i, None
        node = self.expr(0)
        if self.i - self.expr_start > MAX_EXPR_TOKENS:
            raise self.too_long()
        self.expr_start = None
        if self.broken is not None:
            return Broken(self.broken, node.pos, node.text)
        return node

    def defer(self, error: SpecError) -> None:
        if self.broken is None:
            self.broken = error

    def span_pos(self, first: int) -> tuple[SourcePos, tuple[int, int]]:
        last = self.i - 1
        n = len(self.values[last])
        line, col = self.lines[first], self.cols[first]
        end = self.cols[last] + n if self.lines[last] == line else None
        return SourcePos(self.path, line, col, end), (self.starts[first], self.starts[last] + n)

    def enode(self, kind: str, args: list, first: int):
        """An expression node: Lark's subtree, or the Expr the reader would build from it."""
        if not self.exprs:
            return self.tree(kind, args, first)
        pos, span = self.span_pos(first)
        if kind == "div" and self.broken is None:
            problem = division_problem(args[0], args[1], self.text)
            if problem is not None:
                self.defer(problem)
        return Expr(kind, pos, None, None, None, tuple(args), source=self.text, span=span)

    def group(self, inner, first: int):
        if not self.exprs:
            return self.tree("group", [inner], first)
        pos, span = self.span_pos(first)
        return inner.regrouped(pos, self.text, span)

    def leaf(self, kind: str, first: int):
        """A number or a name."""
        if not self.exprs:
            return self.tree("num" if kind == "NUMBER" else "var", [self.token(kind)], first)
        i = self.i
        if self.kinds[i] != kind:
            raise self.fail()
        value = self.values[i]
        if self.expr_start is not None and i - self.expr_start >= MAX_EXPR_TOKENS:
            raise self.too_long()
        self.i = i + 1
        col = self.cols[i]
        pos = SourcePos(self.path, self.lines[i], col, col + len(value))
        if kind == "NAME":
            if value in KEYWORDS:
                self.keyword_seen = True
            return Expr("var", pos, value, None, value)
        try:
            number = parse_number(value)
        except ValueError as exc:
            self.defer(number_error(exc, pos, self.text))
            number = Fraction(0)
        return Expr("num", pos, value, number)

    def too_long(self) -> SpecError:
        j = self.expr_start
        return too_long(SourcePos(self.path, self.lines[j], self.cols[j], self.cols[j] + len(self.values[j])), self.text)

    def expr(self, depth: int) -> Tree:
        first = self.i
        left = self.unary(depth)
        kinds = self.kinds
        while kinds[self.i] in ("*", "/"):
            op = "mul" if kinds[self.i] == "*" else "div"
            self.i += 1
            right = self.unary(depth)
            left = self.enode(op, [left, right], first)
        return left

    def unary(self, depth: int) -> Tree:
        kind = self.kinds[self.i]
        if (kind == "NAME" or kind == "NUMBER") and self.kinds[self.i + 1] != "^":
            return self.leaf(kind, self.i)   # the common case, at once
        signs = []
        while self.kinds[self.i] == "-":
            depth = self.deeper(depth)
            signs.append(self.i)
            self.i += 1
        node = self.power(depth)
        for first in reversed(signs):
            node = self.enode("neg", [node], first)
        return node

    def power(self, depth: int) -> Tree:
        first = self.i
        base = self.atom(depth)
        if self.kinds[self.i] != "^":
            return base
        self.i += 1
        return self.enode("pow", [base, self.exp_atom(depth)], first)

    def atom(self, depth: int) -> Tree:
        first = self.i
        kind = self.kinds[first]
        if kind == "NUMBER" or kind == "NAME":
            return self.leaf(kind, first)
        if kind == "(":
            depth = self.deeper(depth)
            self.i += 1
            inner = self.expr(depth)
            self.expect(")")
            return self.group(inner, first)
        raise self.fail()

    def exp_atom(self, depth: int) -> Tree:
        signs = []
        while self.kinds[self.i] == "-":
            depth = self.deeper(depth)
            signs.append(self.i)
            self.i += 1
        first = self.i
        kind = self.kinds[first]
        if kind == "NUMBER" or kind == "NAME":
            node = self.leaf(kind, first)
        elif kind == "(":
            depth = self.deeper(depth)
            self.i += 1
            inner = self.exp_sum(depth)
            self.expect(")")
            node = self.group(inner, first)
        else:
            raise self.fail()
        for start in reversed(signs):
            node = self.enode("neg", [node], start)
        return node

    def exp_sum(self, depth: int) -> Tree:
        first = self.i
        left = self.exp_prod(depth)
        while self.kinds[self.i] in ("+", "-"):
            op = "add" if self.kinds[self.i] == "+" else "sub"
            self.i += 1
            left = self.enode(op, [left, self.exp_prod(depth)], first)
        return left

    def exp_prod(self, depth: int) -> Tree:
        first = self.i
        left = self.exp_atom(depth)
        while self.kinds[self.i] in ("*", "/"):
            op = "mul" if self.kinds[self.i] == "*" else "div"
            self.i += 1
            left = self.enode(op, [left, self.exp_atom(depth)], first)
        return left



__all__ = ["SMALL", "Bail", "Fail", "FastParser", "parse", "parse_checked"]
