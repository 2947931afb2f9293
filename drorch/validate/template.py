"""``{name}`` templates and dotted JSON paths: pure functions, no I/O.

A string that is exactly one ``{name}`` becomes the variable's value with its
type (an integer id stays an integer in a JSON body); a template inside a
longer string is replaced by the value's text. ``{{`` and ``}}`` are literal
braces. An unknown name is an error (``TemplateError``), never an empty string:
sending a checkout without its token would test nothing.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

_NAME = r"[A-Za-z_][A-Za-z0-9_]*"
_TOKEN_RE = re.compile(r"\{\{|\}\}|\{(" + _NAME + r")\}")
_WHOLE_RE = re.compile(r"^\{(" + _NAME + r")\}$")
_SQL_PARAM_RE = re.compile(r"%\((" + _NAME + r")\)s")

_MISSING = object()


class TemplateError(ValueError):
    """A template names a variable nobody provided."""


class PathError(LookupError):
    """A dotted path does not exist in a JSON document."""


def template_names(obj: Any) -> set[str]:
    """Every ``{name}`` in a string, or in the strings nested in lists and dicts."""
    if isinstance(obj, str):
        return {m.group(1) for m in _TOKEN_RE.finditer(obj) if m.group(1)}
    if isinstance(obj, Mapping):
        names: set[str] = set()
        for value in obj.values():
            names |= template_names(value)
        return names
    if isinstance(obj, list | tuple):
        names = set()
        for value in obj:
            names |= template_names(value)
        return names
    return set()


def sql_parameter_names(sql: str) -> set[str]:
    """The ``%(name)s`` parameters of a psycopg query."""
    return set(_SQL_PARAM_RE.findall(sql))


def render(obj: Any, variables: Mapping[str, Any]) -> Any:
    """Substitute templates in ``obj`` (strings, and strings nested in lists and dicts).

    Dict keys are not templated. Raises ``TemplateError`` naming the first
    unknown variable.
    """
    if isinstance(obj, str):
        whole = _WHOLE_RE.match(obj)
        if whole:
            return _lookup(whole.group(1), variables)
        return _TOKEN_RE.sub(lambda m: _replace(m, variables), obj)
    if isinstance(obj, Mapping):
        return {key: render(value, variables) for key, value in obj.items()}
    if isinstance(obj, list | tuple):
        return [render(value, variables) for value in obj]
    return obj


def render_text(text: str, variables: Mapping[str, Any]) -> str:
    """Like ``render`` but always returns text (URLs, headers, subjects)."""
    return _TOKEN_RE.sub(lambda m: _replace(m, variables), text)


def _replace(match: re.Match[str], variables: Mapping[str, Any]) -> str:
    token = match.group(0)
    if token == "{{":
        return "{"
    if token == "}}":
        return "}"
    return str(_lookup(match.group(1), variables))


def _lookup(name: str, variables: Mapping[str, Any]) -> Any:
    value = variables.get(name, _MISSING)
    if value is _MISSING:
        known = ", ".join(sorted(variables)) or "none"
        raise TemplateError(f"unknown variable {{{name}}} (known: {known})")
    return value


def sql_params(sql: str, variables: Mapping[str, Any]) -> dict[str, Any]:
    """Exactly the parameters ``sql`` names, taken from ``variables``."""
    return {name: _lookup(name, variables) for name in sorted(sql_parameter_names(sql))}


def json_get(document: Any, path: str) -> Any:
    """The value at a dotted path: ``data.id``; a number indexes a list (``items.0``).

    Raises ``PathError`` saying which part was missing.
    """
    node = document
    walked: list[str] = []
    for part in path.split("."):
        walked.append(part)
        if isinstance(node, Mapping) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.lstrip("-").isdigit() and -len(node) <= int(
            part
        ) < len(node):
            node = node[int(part)]
        else:
            raise PathError(f"no {'.'.join(walked)!r} in the response")
    return node


def json_has(document: Any, path: str) -> bool:
    try:
        json_get(document, path)
    except PathError:
        return False
    return True
