"""Reading a runbook file into plain data, refusing what a runbook never needs.

A runbook is a few kilobytes of hand-written YAML, read by every command and by a
watcher that must not hang. Refused before they can cost time, memory or meaning:
a file over :data:`MAX_BYTES`; bytes that are not UTF-8 text; more than
:data:`MAX_NODES` values or nesting deeper than :data:`MAX_DEPTH`; anchors and
aliases (an alias bomb expands a few lines into billions of values, and nothing
in a runbook needs them); a key given twice in one mapping (YAML keeps the last
one silently: an appended ``name: other`` renamed the runbook).

``${VAR}`` and ``${VAR:-default}`` are replaced inside scalar values *after*
parsing, so a runbook is YAML on its own (editors and linters read it) and a
variable's value cannot change the document's structure. A plain (unquoted)
scalar is typed after substitution the way YAML types it (``port: ${P:-5432}``
is an int); a quoted one stays text (the runbook model still accepts ``"5432"``
for an int field). The checks run on the C parser's events and nodes (PyYAML
with libyaml), and only then are Python values built.

Every problem is a :class:`Problem` (line, text); :func:`runbook_error` turns a
list of them into one :class:`RunbookError` of at most a screenful of lines.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

MAX_BYTES = 1 << 20
"""Runbooks are a few KiB: a bigger file is refused before it is parsed."""
MAX_NODES = 20_000
"""Values (scalars, mappings, lists) in one runbook: the lab's has about 400, fifty
databases with thirty listed tables each about 8,000. Each costs a few microseconds
in every pass (parse, check, build, validate): this bounds the time, not just memory."""
MAX_DEPTH = 64
"""Nesting depth: the runbook format goes about 8 levels deep."""
MAX_SHOWN = 15
"""Problems printed; the rest are counted (one screen, the first ones to fix)."""

_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_STR_TAG = "tag:yaml.org,2002:str"
_MERGE_TAG = "tag:yaml.org,2002:merge"
_BaseLoader: type = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class RunbookError(Exception):
    """A runbook could not be loaded; the message is meant for a human."""


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a runbook: its 1-based line when known, and what is wrong."""

    line: int | None
    text: str


def runbook_error(path: Path, problems: list[Problem], total: int | None = None) -> RunbookError:
    """One error naming the file on every line; past :data:`MAX_SHOWN` only a count.

    ``total`` is how many problems there are when the caller described only the first
    few (describing a hundred thousand costs time nobody reads)."""
    total = len(problems) if total is None else total
    lines = [f"{path}:{p.line}: {p.text}" if p.line else f"{path}: {p.text}"
             for p in problems[:MAX_SHOWN]]
    if total > MAX_SHOWN:
        lines.append(f"{path}: ... and {total - MAX_SHOWN} more problems")
    return RunbookError("\n".join(lines))


def expand_env(text: str) -> tuple[str, list[str]]:
    """``text`` with every ``${VAR}`` / ``${VAR:-default}`` replaced, and the names of
    variables that are unset and have no default (left in place)."""
    missing: list[str] = []

    def sub(m: re.Match[str]) -> str:
        value = os.environ.get(m.group(1))
        if value is not None:
            return value
        if m.group(2) is None:
            missing.append(m.group(1))
            return m.group(0)
        return m.group(2)

    return _ENV_REF.sub(sub, text), missing


class _Loader(_BaseLoader):  # type: ignore[misc,valid-type]
    """Safe loader whose mappings remember the line of each key (``__lines__``)."""


def _construct_mapping(loader: _Loader, node: yaml.MappingNode) -> dict[str, Any]:
    mapping = loader.construct_mapping(node, deep=True)
    mapping["__lines__"] = {key.value: key.start_mark.line + 1 for key, _ in node.value}
    return mapping


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def read_runbook_file(path: Path) -> Any:
    """The runbook's data: mappings carry ``__lines__`` (key -> line) for error messages.

    Raises :class:`RunbookError` naming the file (and line) for every refusal above.
    """
    text = _read_text(path)
    problems = _scan(text)
    if problems:
        raise runbook_error(path, problems)
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check(node, (), loader, problems)
        if problems:
            raise runbook_error(path, problems)
        return loader.construct_document(node)
    except yaml.YAMLError as exc:
        raise runbook_error(path, [_yaml_problem(exc)]) from None
    finally:
        loader.dispose()


def _read_text(path: Path) -> str:
    """The file as text: at most :data:`MAX_BYTES` read, NUL bytes and bad UTF-8 named."""
    try:
        with path.open("rb") as f:
            data = f.read(MAX_BYTES + 1)
    except OSError as exc:
        raise RunbookError(f"{path}: cannot read runbook: {exc.strerror or exc}") from None
    if len(data) > MAX_BYTES:
        raise runbook_error(path, [Problem(None, (
            f"larger than the {MAX_BYTES / 2**20:g} MiB limit for a runbook "
            "(runbooks are a few KiB of YAML: is this the right file?)"))])
    if (nul := data.find(b"\0")) >= 0:
        raise runbook_error(path, [Problem(data.count(b"\n", 0, nul) + 1, (
            f"a binary file, not YAML text (NUL byte at byte {nul})"))])
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise runbook_error(path, [Problem(line, (
            f"not UTF-8 text at byte {exc.start} (a runbook is UTF-8 YAML)"))]) from None


def _scan(text: str) -> list[Problem]:
    """Walk the parser's events once: aliases, anchors, too many values, too deep.

    Stops at the first such problem; events are cheap and nothing is built yet, so an
    alias bomb or a million-item list costs no more than reading it.
    """
    nodes = depth = 0
    try:
        for event in yaml.parse(text, Loader=_Loader):
            line = event.start_mark.line + 1
            if isinstance(event, yaml.AliasEvent):
                return [Problem(line, f"YAML alias *{event.anchor}: anchors and aliases are "
                                      "not allowed in a runbook (write the value out)")]
            if not isinstance(event, yaml.NodeEvent):
                if isinstance(event, yaml.CollectionEndEvent):
                    depth -= 1
                continue
            if event.anchor is not None:
                return [Problem(line, f"YAML anchor &{event.anchor}: anchors and aliases are "
                                      "not allowed in a runbook (write the value out)")]
            nodes += 1
            if nodes > MAX_NODES:
                return [Problem(line, f"more than {MAX_NODES:,} values: a runbook has a few "
                                      "hundred (is this the right file?)")]
            if isinstance(event, yaml.CollectionStartEvent):
                depth += 1
                if depth > MAX_DEPTH:
                    return [Problem(line, f"nested more than {MAX_DEPTH} levels deep")]
    except yaml.YAMLError as exc:
        return [_yaml_problem(exc)]
    return []


def _check(node: yaml.Node, path: tuple[Any, ...], loader: _Loader,
           problems: list[Problem]) -> None:
    """Substitute ``${VAR}`` in every scalar and refuse keys given twice in a mapping."""
    if isinstance(node, yaml.ScalarNode):
        _substitute(node, loader, problems)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _check(item, (*path, index), loader, problems)
    elif isinstance(node, yaml.MappingNode):
        first: dict[tuple[str, str], int] = {}
        for key, value in node.value:
            _check(key, path, loader, problems)
            if isinstance(key, yaml.ScalarNode) and key.tag == _MERGE_TAG:
                problems.append(Problem(key.start_mark.line + 1, (
                    f"{'.'.join(str(p) for p in path) or '(top level)'}: merge keys (<<) "
                    "are not allowed in a runbook: write the keys out (a merged key "
                    "would silently lose to one given here)")))
            elif isinstance(key, yaml.ScalarNode):
                line = key.start_mark.line + 1
                where = ".".join(str(p) for p in path) or "(top level)"
                if (ident := (key.tag, key.value)) in first:
                    problems.append(Problem(line, (
                        f"{where}: key {key.value!r} is given twice in one mapping (first at "
                        f"line {first[ident]}); YAML would silently keep only the last")))
                else:
                    first[ident] = line
            name = key.value if isinstance(key, yaml.ScalarNode) else "?"
            _check(value, (*path, name), loader, problems)


def _substitute(node: yaml.ScalarNode, loader: _Loader, problems: list[Problem]) -> None:
    if "${" not in node.value:
        return
    value, missing = expand_env(node.value)
    for name in missing:
        problems.append(Problem(node.start_mark.line + 1, (
            f"environment variable {name} is not set (and ${{{name}}} has no default)")))
    if not node.style and node.tag == _STR_TAG:  # plain: None in Python, "" from libyaml
        node.tag = loader.resolve(yaml.ScalarNode, value, (True, False))
    node.value = value


def _yaml_problem(exc: yaml.YAMLError) -> Problem:
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc)
    context = getattr(exc, "context", None)
    text = f"invalid YAML: {problem}" + (f" ({context})" if context else "")
    return Problem(mark.line + 1 if mark else None, text)
