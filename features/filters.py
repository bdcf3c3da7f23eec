"""Structured row filters: a parameter that selects rows, never evaluated as code.

A filter is one or more clauses joined by ``and``::

    method = 'deepwalk'
    encoder in (minilm-onnx, minilm-st) and dim != 0

Each clause is ``column = value``, ``column != value``, ``column in (a, b, ...)`` or
``column not in (a, b, ...)``. Values are bare words or quoted ('...' or "...", a quote doubled
inside). Nothing else is accepted: no functions, no expressions, no SQL. :func:`parse_filter` checks
the syntax (a parameter fails at validation, before any run); :func:`filter_column` checks every
column against the table's schema, converts each value to the column's type and builds the
predicate from ``F.col(...) == F.lit(...)`` — the text never reaches Spark's SQL parser.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pyspark.sql import Column
    from pyspark.sql.types import StructType

_TOKEN = re.compile(
    r"""\s*(?:(?P<q>'(?:[^']|'')*'|"(?:[^"]|"")*")|(?P<op>!=|<>|==|=|\(|\)|,)|(?P<word>[^\s=!<>(),'"]+))"""
)
_COLUMN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass(frozen=True)
class Clause:
    column: str
    op: str  # "=", "!=", "in", "not in"
    values: tuple[str, ...]

    def __str__(self) -> str:
        vals = ", ".join(_quote(v) for v in self.values)
        return f"{self.column} {self.op} ({vals})" if self.op.endswith("in") else f"{self.column} {self.op} {vals}"


@dataclass(frozen=True)
class RowFilter:
    clauses: tuple[Clause, ...]

    def __str__(self) -> str:
        return " and ".join(map(str, self.clauses))


def _quote(v: str) -> str:
    return "'" + v.replace("'", "''") + "'"


def _tokens(text: str) -> list[tuple[str, str]]:
    out, pos = [], 0
    text = text.rstrip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            raise ValueError(f"filter {text!r}: cannot read {text[pos : pos + 20]!r}")
        if m.group("q") is not None:
            q = m.group("q")
            out.append(("value", q[1:-1].replace(q[0] * 2, q[0])))
        elif m.group("op") is not None:
            out.append(("op", {"==": "=", "<>": "!="}.get(m.group("op"), m.group("op"))))
        else:
            out.append(("word", m.group("word")))
        pos = m.end()
    return out


def parse_filter(text: str) -> RowFilter:
    """The filter in ``text``, or a ValueError saying what is wrong with it."""
    toks = _tokens(text)
    if not toks:
        raise ValueError("filter is empty")
    clauses: list[Clause] = []
    i = 0

    def expect_value() -> str:
        nonlocal i
        if i >= len(toks) or toks[i][0] not in ("value", "word"):
            raise ValueError(f"filter {text!r}: expected a value after {clauses[-1].column if clauses else ''}")
        i += 1
        return toks[i - 1][1]

    while True:
        if i >= len(toks) or toks[i][0] != "word" or not _COLUMN.match(toks[i][1]):
            got = toks[i][1] if i < len(toks) else "the end"
            raise ValueError(
                f"filter {text!r}: expected a column name, got {got!r} "
                "(clauses are column = value, column != value, column in (a, b), joined by and)"
            )
        column = toks[i][1]
        i += 1
        if i < len(toks) and toks[i] in (("op", "="), ("op", "!=")):
            op = toks[i][1]
            i += 1
            values: tuple[str, ...] = (expect_value(),)
        else:
            negate = i < len(toks) and toks[i][0] == "word" and toks[i][1].lower() == "not"
            i += negate
            if not (i < len(toks) and toks[i][0] == "word" and toks[i][1].lower() == "in"):
                raise ValueError(f"filter {text!r}: after {column!r} expected =, !=, in or not in")
            i += 1
            if i >= len(toks) or toks[i] != ("op", "("):
                raise ValueError(f"filter {text!r}: expected ( after in")
            i += 1
            vals = [expect_value()]
            while i < len(toks) and toks[i] == ("op", ","):
                i += 1
                vals.append(expect_value())
            if i >= len(toks) or toks[i] != ("op", ")"):
                raise ValueError(f"filter {text!r}: expected , or ) in the list of {column!r}")
            i += 1
            op, values = ("not in" if negate else "in"), tuple(vals)
        clauses.append(Clause(column, op, values))
        if i == len(toks):
            return RowFilter(tuple(clauses))
        if not (toks[i][0] == "word" and toks[i][1].lower() == "and"):
            raise ValueError(f"filter {text!r}: expected 'and' or the end after {clauses[-1]}, got {toks[i][1]!r}")
        i += 1


def _convert(value: str, dtype, column: str) -> Any:
    from pyspark.sql import types as T

    try:
        if isinstance(dtype, T.StringType):
            return value
        if isinstance(dtype, T.BooleanType):
            if value.lower() not in ("true", "false"):
                raise ValueError
            return value.lower() == "true"
        if isinstance(dtype, T.IntegralType):
            return int(value)
        if isinstance(dtype, (T.FloatType, T.DoubleType)):
            return float(value)
        if isinstance(dtype, T.DecimalType):
            import decimal

            return decimal.Decimal(value)
        if isinstance(dtype, T.DateType):
            return dt.date.fromisoformat(value)
    except (ValueError, ArithmeticError):
        raise ValueError(f"filter: {value!r} is not a value of column {column!r} ({dtype.simpleString()})") from None
    raise ValueError(
        f"filter: column {column!r} is {dtype.simpleString()}; filters take string, number, boolean and date columns"
    )


def filter_column(f: RowFilter, schema: StructType) -> Column:
    """The predicate of ``f`` for a table of ``schema`` (every column checked, every value typed)."""
    from pyspark.sql import functions as F

    fields = {x.name: x.dataType for x in schema.fields}
    pred: Column | None = None
    for c in f.clauses:
        if c.column not in fields:
            raise ValueError(f"filter: the table has no column {c.column!r}; it has {', '.join(fields)}")
        values = [_convert(v, fields[c.column], c.column) for v in c.values]
        col = F.col(c.column)
        if c.op == "=":
            p = col == F.lit(values[0])
        elif c.op == "!=":
            p = col != F.lit(values[0])
        else:
            p = col.isin(*[F.lit(v) for v in values])
            p = ~p if c.op == "not in" else p
        pred = p if pred is None else pred & p
    if pred is None:
        raise ValueError("filter is empty")
    return pred
