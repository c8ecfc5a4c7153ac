"""Exact, bounded parsing and evaluation of Countdown equations written by a model.

Model output is hostile input: a policy under optimisation pressure learns any hole in the checker.
So this is a small recursive-descent parser over a closed grammar, evaluated with `Fraction`
(no `eval`, no floats, no tolerance):

    equation := expr [ "=" NUMBER ]
    expr     := term   (("+" | "-") term)*
    term     := atom   (("*" | "/") atom)*
    atom     := NUMBER | "(" expr ")"
    NUMBER   := "0" | [1-9][0-9]*          (ASCII digits only)

Whitespace (space, tab, CR, LF) may separate tokens. Decisions, each closing a known reward hack:
- Binary operators only. Countdown combines numbers with + - * /; a unary minus would be a free
  extra operation (`-(2 - 5)` flips a sign without using a number). `**`, `//`, `%` and any other
  character fail to parse, so `2**10` or `9**9**9**9` cost nothing.
- Literals are plain ASCII integers without leading zeros: `05`, `4.0`, Unicode digits (`٣`, `３`)
  and look-alike operators (`＋`, `−`, `×`) are rejected; `43` is one literal, so gluing 4 and 3
  never matches the numbers [4, 3].
- An optional trailing `= N` (as in the prompt's own example `(1 + 2) / 3 = 1`) must be true:
  N must equal the expression's value, so with the exact-target check N is the target.
- Bounds are checked before any work: at most MAX_CHARS characters and MAX_DEPTH nested
  parentheses, so parsing is linear and evaluation is on at most ~MAX_CHARS/2 operations.
  `check_equation` compares the literals with the task's numbers before evaluating, so only the
  task's own (small) numbers are ever multiplied.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Iterable
from dataclasses import dataclass
from fractions import Fraction

MAX_CHARS = 300  # longest equation accepted (a 4-number Countdown answer needs ~25)
MAX_DEPTH = 64  # deepest parenthesis nesting accepted

_ALLOWED = re.compile(r"[0-9()+\-*/= \t\r\n]*")
_TOKEN = re.compile(r"[0-9]+|[()+\-*/=]")
_INT_TEXT = re.compile(r"-?[0-9]+")
_OPS = {"+": operator.add, "-": operator.sub, "*": operator.mul, "/": operator.truediv}


class ExprError(ValueError):
    """The text is not a valid Countdown expression (syntax, bounds, or division by zero)."""


@dataclass(frozen=True, slots=True)
class Num:
    value: int


@dataclass(frozen=True, slots=True)
class BinOp:
    op: str  # one of + - * /
    left: Expr
    right: Expr


Expr = Num | BinOp


@dataclass(frozen=True, slots=True)
class Equation:
    expr: Expr
    claimed: int | None  # N of a trailing "= N", None without one


def parse(text: str) -> Expr:
    """Parse an expression (no `=`). Raises ExprError on anything outside the grammar or bounds."""
    return _parse_tokens(_tokenize(text))


def parse_equation(text: str) -> Equation:
    """Parse `expr` or `expr = N`, e.g. "(1 + 2) / 3 = 1" -> Equation(BinOp('/', ...), claimed=1)."""
    tokens = _tokenize(text)
    if "=" not in tokens:
        return Equation(_parse_tokens(tokens), None)
    eq = tokens.index("=")
    if len(tokens) != eq + 2:
        raise ExprError("'=' must be followed by exactly one number, at the end")
    return Equation(_parse_tokens(tokens[:eq]), _literal(tokens[eq + 1]))


def evaluate(expr: Expr) -> Fraction:
    """The exact value of a parsed expression. Raises ExprError on division by zero."""
    if isinstance(expr, Num):
        return Fraction(expr.value)
    left, right = evaluate(expr.left), evaluate(expr.right)
    if expr.op == "/" and right == 0:
        raise ExprError("division by zero")
    return _OPS[expr.op](left, right)


def literals(expr: Expr) -> list[int]:
    """The number literals of an expression, left to right."""
    if isinstance(expr, Num):
        return [expr.value]
    return literals(expr.left) + literals(expr.right)


def equation_value(equation: str, nums: Iterable) -> Fraction | None:
    """The value of `equation` if it is valid and uses the multiset `nums` exactly; else None.

    Valid means: it parses, its literals are exactly `nums` (each once, all used; compared before
    evaluating), it has no division by zero, and a trailing `= N` (if any) equals its value.
    Never raises.
    """
    try:
        parsed = parse_equation(equation)
        if sorted(literals(parsed.expr)) != sorted(as_int(n) for n in nums):
            return None
        value = evaluate(parsed.expr)
    except (ExprError, TypeError, ValueError):
        return None
    if parsed.claimed is not None and parsed.claimed != value:
        return None
    return value


def check_equation(equation: str, nums: Iterable, target) -> bool:
    """True when `equation` uses each of `nums` exactly once and equals `target` exactly. Never raises.

    Example: check_equation("(1 + 2) / 3 = 1", [1, 2, 3], 1) -> True;
    check_equation("2**10", [2, 10], 1024) -> False.
    """
    try:
        target = as_int(target)
    except (TypeError, ValueError):
        return False
    return equation_value(equation, nums) == target


def extract_equation(completion: str) -> str | None:
    """The stripped text of the first `<answer>...</answer>` block, or None if there is none.

    Linear time (two `str.find`s): the same block the original's `<answer>(.*?)</answer>` found.
    """
    start = completion.find("<answer>")
    if start < 0:
        return None
    end = completion.find("</answer>", start + len("<answer>"))
    if end < 0:
        return None
    return completion[start + len("<answer>") : end].strip()


def as_int(value) -> int:
    """An int from an int-like value or a string like "14" (task data arrives as either)."""
    if isinstance(value, str):
        if _INT_TEXT.fullmatch(value.strip()) is None:
            raise ValueError(f"not an integer: {value!r}")
        return int(value)
    return operator.index(value)


def _tokenize(text: str) -> list[str]:
    if not isinstance(text, str):
        raise ExprError(f"expected a string, got {type(text).__name__}")
    if len(text) > MAX_CHARS:
        raise ExprError(f"longer than {MAX_CHARS} characters")
    if _ALLOWED.fullmatch(text) is None:
        raise ExprError("only ASCII digits, + - * / ( ) = and spaces are allowed")
    return _TOKEN.findall(text)


def _literal(token: str) -> int:
    if not token or not "0" <= token[0] <= "9":
        raise ExprError(f"expected a number, got {token or 'the end'!r}")
    if len(token) > 1 and token[0] == "0":
        raise ExprError(f"leading zero in {token!r}")
    return int(token)


def _parse_tokens(tokens: list[str]) -> Expr:
    parser = _Parser(tokens)
    expr = parser.expr()
    if parser.pos != len(tokens):
        raise ExprError(f"unexpected {tokens[parser.pos]!r}")
    return expr


class _Parser:
    """Recursive descent over the token list; one method per grammar rule."""

    def __init__(self, tokens: list[str]):
        self.tokens, self.pos, self.depth = tokens, 0, 0

    def _peek(self) -> str:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else ""

    def _take(self) -> str:
        token = self._peek()
        self.pos += 1
        return token

    def expr(self) -> Expr:
        node = self.term()
        while self._peek() in ("+", "-"):
            node = BinOp(self._take(), node, self.term())
        return node

    def term(self) -> Expr:
        node = self.atom()
        while self._peek() in ("*", "/"):
            node = BinOp(self._take(), node, self.atom())
        return node

    def atom(self) -> Expr:
        token = self._take()
        if token != "(":
            return Num(_literal(token))
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise ExprError(f"more than {MAX_DEPTH} nested parentheses")
        node = self.expr()
        if self._take() != ")":
            raise ExprError("missing ')'")
        self.depth -= 1
        return node
