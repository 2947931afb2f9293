"""Does a set of IAM identity policies allow an action on a resource? Pure.

Used where ``SimulatePrincipalPolicy`` is not offered (moto has no IAM simulation):
the principal's own policies evaluated the way IAM's policy evaluation logic reads
them (IAM User Guide, "Policy evaluation logic"): an explicit ``Deny`` that matches
wins, else an ``Allow`` that matches allows, else it is an implicit deny. ``Action``
and ``Resource`` (and their ``Not`` forms) match with ``*`` and ``?`` wildcards,
actions case-insensitively. What this does not evaluate, and says so: ``Condition``
blocks (a matching statement with conditions counts as matching), permissions
boundaries, session policies, service control policies and resource policies.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

Decision = Literal["allowed", "explicitDeny", "implicitDeny"]


@dataclass(frozen=True)
class Evaluated:
    decision: Decision
    conditional: bool
    """The deciding statement had a Condition block, which was not evaluated."""
    condition_keys: frozenset[str] = frozenset()
    """The condition keys of the deciding statement (lower case)."""


def _list(value: Any) -> list[str]:
    if value is None:
        return []
    return [value] if isinstance(value, str) else [str(v) for v in value]


def _match(patterns: list[str], value: str, *, fold: bool) -> bool:
    if fold:
        return any(fnmatch.fnmatchcase(value.lower(), p.lower()) for p in patterns)
    return any(fnmatch.fnmatchcase(value, p) for p in patterns)


def _applies(st: dict[str, Any], action: str, resource: str) -> bool:
    if "Action" in st:
        ok = _match(_list(st["Action"]), action, fold=True)
    else:
        ok = not _match(_list(st.get("NotAction")), action, fold=True)
    if not ok:
        return False
    if "Resource" in st:
        return _match(_list(st["Resource"]), resource, fold=False)
    if "NotResource" in st:
        return not _match(_list(st["NotResource"]), resource, fold=False)
    return False


def _statements(documents: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for doc in documents:
        st = doc.get("Statement") or []
        out += [st] if isinstance(st, dict) else list(st)
    return out


def evaluate(documents: Iterable[dict[str, Any]], action: str, resource: str) -> Evaluated:
    """The decision for ``action`` on ``resource`` under ``documents``."""
    allow: dict[str, Any] | None = None
    for st in _statements(documents):
        if not _applies(st, action, resource):
            continue
        if st.get("Effect") == "Deny":
            return Evaluated("explicitDeny", bool(st.get("Condition")), _keys(st))
        if st.get("Effect") == "Allow" and (allow is None or not st.get("Condition")):
            allow = st
    if allow is not None:
        return Evaluated("allowed", bool(allow.get("Condition")), _keys(allow))
    return Evaluated("implicitDeny", False)


def _keys(st: dict[str, Any]) -> frozenset[str]:
    """The condition keys a statement tests (``{operator: {key: values}}``)."""
    cond = st.get("Condition") or {}
    return frozenset(str(k).lower() for block in cond.values() if isinstance(block, dict)
                     for k in block)
