"""The metric names Grafana dashboards query (roles/monitoring/files/grafana/dashboards).

A dashboard is checked against the metrics the stack's exporters expose: the
unit tests compare :func:`dashboard_metrics` with a fixed list, a live test
with what a running Prometheus knows. Both need the *exact* set of metric
names each PromQL expression selects, so :func:`metric_names` is a small
PromQL lexer rather than a regular expression over the whole text:

- string literals (``"..."``, ``'...'``, ```...```) are skipped, so label
  values, ``label_replace`` arguments and Grafana variables in quotes
  (``host=~"$host"``) are never names;
- ``{...}`` holds label matchers: skipped, except an equality matcher on
  ``__name__`` (``{__name__="up"}``), which names the metric;
- ``[...]`` holds a range or subquery (``[5m]``, ``[$__rate_interval]``,
  ``[1h:5m]``): skipped;
- ``by``, ``without``, ``on``, ``ignoring``, ``group_left``, ``group_right``
  and their ``(label, ...)`` lists are skipped, as are the other keywords
  (``bool``, ``and``, ``or``, ``unless``, ``offset``, ``atan2``), the
  aggregation operators (``sum``, ``topk``, ...) and numbers, durations,
  ``Inf`` and ``NaN``;
- an identifier followed by ``(`` is a function (``rate``,
  ``histogram_quantile``, ``label_replace``, ``start`` after ``@``);
- Grafana variables outside strings (``$var``, ``${var}``, ``[[var]]``) and
  ``#`` comments are skipped.

What remains are the metric names (recording rule names with ``:`` too).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from typing import Any

__all__ = ["dashboard_metrics", "dashboard_queries", "metric_names"]

# Keywords that take a parenthesised list of label names.
_GROUPING = frozenset({"by", "without", "on", "ignoring", "group_left", "group_right"})
# Other keywords: set and comparison operators' modifiers, binary keywords.
_KEYWORDS = _GROUPING | frozenset({"bool", "and", "or", "unless", "offset", "atan2"})
# Aggregation operators: keywords in PromQL (`sum by (x) (...)` has no "(" right after sum).
_AGGREGATORS = frozenset(
    {
        "sum",
        "min",
        "max",
        "avg",
        "group",
        "stddev",
        "stdvar",
        "count",
        "count_values",
        "bottomk",
        "topk",
        "quantile",
        "limitk",
        "limit_ratio",
    }
)
_NUMBER_WORDS = frozenset({"inf", "nan"})

_IDENT = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")
_NUMBER = re.compile(r"(?:[0-9]|\.[0-9])[A-Za-z0-9_.]*")
_VARIABLE = re.compile(r"\$(?:\{[^}]*\}|\w+)|\[\[[^\]]*\]\]")

# Token kinds.
_STR, _ID, _PUNCT = "string", "ident", "punct"


def _string_end(text: str, start: int) -> int:
    """Index just after the string literal opening at ``text[start]`` (unterminated: end of text)."""
    quote = text[start]
    index = start + 1
    while index < len(text):
        char = text[index]
        if char == "\\" and quote != "`":
            index += 2
            continue
        if char == quote:
            return index + 1
        index += 1
    return len(text)


def _unquote(literal: str) -> str:
    """The value of a PromQL string literal (common escapes only)."""
    body = literal[1:-1] if len(literal) >= 2 and literal[-1] == literal[0] else literal[1:]
    if literal[0] == "`":
        return body
    return re.sub(r"\\(.)", r"\1", body)


def _tokens(expr: str) -> Iterator[tuple[str, str]]:
    """(kind, text) tokens of a PromQL expression; numbers, variables, comments and spaces are dropped."""
    index = 0
    while index < len(expr):
        char = expr[index]
        if char.isspace():
            index += 1
        elif char == "#":
            newline = expr.find("\n", index)
            index = len(expr) if newline < 0 else newline + 1
        elif char in "\"'`":
            end = _string_end(expr, index)
            yield _STR, expr[index:end]
            index = end
        elif variable := _VARIABLE.match(expr, index):
            index = variable.end()
        elif number := _NUMBER.match(expr, index):
            index = number.end()
        elif ident := _IDENT.match(expr, index):
            yield _ID, ident.group(0)
            index = ident.end()
        else:
            yield _PUNCT, char
            index += 1


def _skip_group(tokens: list[tuple[str, str]], index: int, opening: str, closing: str) -> int:
    """Index just after the bracket closing the one at ``tokens[index]`` (nesting counted)."""
    depth = 0
    while index < len(tokens):
        kind, text = tokens[index]
        if kind == _PUNCT and text == opening:
            depth += 1
        elif kind == _PUNCT and text == closing:
            depth -= 1
            if depth == 0:
                return index + 1
        index += 1
    return index


def _selector_names(tokens: list[tuple[str, str]]) -> set[str]:
    """Metric names a label-matcher list names: ``__name__="x"`` (equality only; regexes name no set)."""
    names = set()
    for index in range(len(tokens) - 2):
        (kind, text), (_, op), (value_kind, value) = tokens[index : index + 3]
        # "=~" lexes as "=" then "~" and "!=" as "!" then "=": only "=" directly before the string is equality.
        if kind == _ID and text == "__name__" and op == "=" and value_kind == _STR:
            names.add(_unquote(value))
    return names


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression references.

    >>> sorted(metric_names('histogram_quantile(0.95, sum by (le) (rate(x_bucket[5m])))'))
    ['x_bucket']
    >>> sorted(metric_names('sum(rate(a_total{job="x", state=~"$s"}[$__rate_interval])) / on(host) group_left b'))
    ['a_total', 'b']
    >>> sorted(metric_names('{__name__="up", job="node"} offset 5m'))
    ['up']
    """
    tokens = list(_tokens(expr))
    names: set[str] = set()
    index = 0
    while index < len(tokens):
        kind, text = tokens[index]
        following = tokens[index + 1] if index + 1 < len(tokens) else (None, None)
        if kind == _PUNCT and text == "{":
            end = _skip_group(tokens, index, "{", "}")
            names |= _selector_names(tokens[index + 1 : end - 1])
            index = end
            continue
        if kind == _PUNCT and text == "[":
            index = _skip_group(tokens, index, "[", "]")
            continue
        if kind == _ID:
            word = text.lower()
            if word in _GROUPING and following == (_PUNCT, "("):
                index = _skip_group(tokens, index + 1, "(", ")")
                continue
            is_function = following == (_PUNCT, "(")
            if not (is_function or word in _KEYWORDS or word in _AGGREGATORS or word in _NUMBER_WORDS):
                names.add(text)
        index += 1
    return names


def _label_values_expr(query: str) -> str | None:
    """The series expression of a Prometheus template-variable query, or None when it has none.

    ``label_values(up{job="x"}, host)`` → ``up{job="x"}``; ``query_result(expr)``
    → ``expr``; ``label_values(host)``, ``label_names()`` and ``metrics(re)``
    select no series and give None.
    """
    match = re.match(r"\s*(label_values|query_result)\s*\(", query)
    if not match:
        return None
    start = match.end()
    depth, index, last_comma = 1, start, None
    while index < len(query):
        char = query[index]
        if char in "\"'`":
            index = _string_end(query, index)
            continue
        if char in "({[":
            depth += 1
        elif char in ")}]":
            depth -= 1
            if depth == 0:
                break
        elif char == "," and depth == 1:
            last_comma = index
        index += 1
    inner = query[start:index]
    if match.group(1) == "label_values":
        if last_comma is None:
            return None
        inner = query[start:last_comma]
    inner = inner.strip()
    return inner or None


def _variable_query(variable: dict[str, Any]) -> str | None:
    """The query text of a template variable (a string, or an object with ``query`` in Grafana 10+)."""
    query = variable.get("query")
    if isinstance(query, dict):
        query = query.get("query") or variable.get("definition")
    return query if isinstance(query, str) else None


def _panel_exprs(panels: list[dict[str, Any]]) -> Iterator[str]:
    """Every target expr of these panels and of the panels nested in them (rows), in order."""
    for panel in panels:
        for target in panel.get("targets") or []:
            expr = target.get("expr")
            if isinstance(expr, str) and expr.strip():
                yield expr
        yield from _panel_exprs(panel.get("panels") or [])


def dashboard_queries(path: str | os.PathLike[str]) -> list[str]:
    """Every PromQL expression of a dashboard JSON file, in document order.

    In turn: each panel's targets' ``expr`` (panels nested in rows included,
    and the ``rows`` of old dashboards), then the series expression of each
    ``query`` template variable (``label_values(up, host)`` gives ``up``;
    variables that select no series give nothing), then the ``expr`` of
    Prometheus annotations. Empty expressions are left out; duplicates are kept.
    """
    with open(path, encoding="utf-8") as handle:
        dashboard = json.load(handle)
    queries = list(_panel_exprs(dashboard.get("panels") or []))
    for row in dashboard.get("rows") or []:
        queries += _panel_exprs(row.get("panels") or [])
    for variable in (dashboard.get("templating") or {}).get("list") or []:
        if variable.get("type") != "query":
            continue
        query = _variable_query(variable)
        expr = _label_values_expr(query) if query else None
        if expr:
            queries.append(expr)
    for annotation in (dashboard.get("annotations") or {}).get("list") or []:
        expr = annotation.get("expr")
        if isinstance(expr, str) and expr.strip():
            queries.append(expr)
    return queries


def dashboard_metrics(path: str | os.PathLike[str]) -> set[str]:
    """The metric names every expression of a dashboard JSON file references (union of :func:`metric_names`)."""
    names: set[str] = set()
    for expr in dashboard_queries(path):
        names |= metric_names(expr)
    return names
