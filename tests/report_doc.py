"""What ``docs/report-json.md`` says a report holds, and how it differs from real reports.

The page's tables each sit under a heading naming a path (``### `rpo.seconds` ``,
``### `flows[].steps[]` ``; "Top level" is the root); their rows' first cells name
keys in backticks. Its "Values" table names every value of an enumerated field
(``…`` stands for free text). :func:`differences` compares that with reports:
"""

from __future__ import annotations

import fnmatch
import re
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DOC = Path(__file__).resolve().parent.parent / "docs" / "report-json.md"

OPAQUE = {"decided_by.trigger", "steps[].detail", "old_region.write_flag_on_return",
          "old_region.databases.*.fenced_on_return", "reconcile.*.totals",
          "reconcile.*.tables[].by_kind", "flows[].steps[].request_headers",
          "flows[].steps[].request_body", "flows[].steps[].response_body"}
"""Objects whose keys are not the page's to list (recorded as given, or a dict keyed
by data); their enumerated values (``decided_by.trigger.kind``) are still read."""

KEYED_BY_NAME = {"times", "old_region.databases", "reconcile"}
"""Objects keyed by a name (a time, a database): their items are the section ``.*``."""

_BACKTICKED = re.compile(r"`([^`]+)`")


@dataclass
class Documented:
    keys: dict[str, set[str]] = field(default_factory=dict)
    values: dict[str, list[str]] = field(default_factory=dict)


@dataclass
class Produced:
    keys: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    values: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))


def documented(text: str | None = None) -> Documented:
    """Keys per section and values per field, as the page lists them."""
    text = DOC.read_text() if text is None else text
    doc = Documented()
    section: str | None = None
    for line in text.splitlines():
        if line.startswith("#"):
            title = line.lstrip("#").strip()
            names = _BACKTICKED.findall(title)
            section = "" if title == "Top level" else "values" if title == "Values" \
                else names[0] if names else None
            continue
        if section is None or not line.startswith("| `"):
            continue
        first, second = [c.strip() for c in line.strip("|").split("|")][:2]
        if section == "values":
            field_name = _BACKTICKED.findall(first)[0]
            doc.values[field_name] = [v.replace("…", "*") for v in _listed(second)]
        else:
            doc.keys.setdefault(section, set()).update(_BACKTICKED.findall(first))
    return doc


def _listed(cell: str) -> list[str]:
    """The backticked values of a cell, leaving out those inside a parenthesis (which
    explains a value rather than listing one)."""
    depth, values = 0, []
    for part in re.split(r"(`[^`]*`)", cell):
        if part.startswith("`") and part.endswith("`") and len(part) > 1:
            if depth == 0:
                values.append(part[1:-1])
        else:
            depth += part.count("(") - part.count(")")
    return values


def produced(reports: Iterable[Mapping[str, Any]], enumerated: Iterable[str]) -> Produced:
    """Keys per section and the values of the ``enumerated`` fields, over ``reports``."""
    out = Produced()
    wanted = set(enumerated)
    for report in reports:
        _walk(report, "", out, wanted)
    return out


def _walk(value: Any, path: str, out: Produced, wanted: set[str],
          keys: bool = True) -> None:
    if path in wanted and value is not None and not isinstance(value, dict | list):
        out.values[path].add(str(value))
    keys = keys and path not in OPAQUE
    if isinstance(value, list):
        for item in value:
            _walk(item, f"{path}[]", out, wanted, keys)
        return
    if not isinstance(value, dict):
        return
    if path in KEYED_BY_NAME:
        for item in value.values():
            _walk(item, f"{path}.*", out, wanted, keys)
        return
    if keys:
        out.keys[path].update(value)
    for key, item in value.items():
        _walk(item, f"{path}.{key}" if path else key, out, wanted, keys)


def differences(reports: Iterable[Mapping[str, Any]], *, both_ways: Iterable[str],
                values_both_ways: Iterable[str], doc: Documented | None = None,
                may_be_missing: Mapping[str, set[str]] | None = None) -> list[str]:
    """Every mismatch, one sentence each:

    - a key a report produces that the page does not name (any section);
    - a key the page names that no report produces (the sections in ``both_ways``);
    - a value of an enumerated field that the page does not list (any field);
    - a listed value no report produces (the fields in ``values_both_ways``).

    ``may_be_missing``: per section, documented keys these reports cannot produce (a
    failback's ``reconcile`` needs a real failback).
    """
    doc = doc or documented()
    got = produced(reports, doc.values)
    problems = []
    for section, keys in sorted(got.keys.items()):
        if section not in doc.keys:
            problems.append(f"section {section or '(top level)'!r} is not documented "
                            f"(keys {sorted(keys)})")
            continue
        for key in sorted(keys - doc.keys[section]):
            problems.append(f"{section or '(top level)'}: key {key!r} is produced but not "
                            "documented")
    for section in both_ways:
        excused = (may_be_missing or {}).get(section, set())
        for key in sorted(doc.keys.get(section, set()) - got.keys.get(section, set())
                          - excused):
            problems.append(f"{section or '(top level)'}: key {key!r} is documented but no "
                            "report produced it")
    for name, patterns in doc.values.items():
        for value in sorted(got.values.get(name, set())):
            if not any(fnmatch.fnmatchcase(value, p) for p in patterns):
                problems.append(f"{name}: value {value!r} is produced but not documented")
    for name in values_both_ways:
        seen = got.values.get(name, set())
        for pattern in doc.values.get(name, []):
            if not any(fnmatch.fnmatchcase(v, pattern) for v in seen):
                problems.append(f"{name}: value {pattern!r} is documented but no report "
                                "produced it")
    return problems
