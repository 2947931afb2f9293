"""The conflict file: what a human resolves, one entry per line (pure, no database).

JSON Lines, so it streams and stays usable with tens of thousands of entries: the
first line is the header (``run_id``, ``database``, ``instructions``), every further
line one conflict. Each conflict shows the key, the columns that differ and both
rows with sensitive columns masked; the human sets ``resolution`` to ``old`` (take
the old primary's row) or ``new`` (keep the new primary's) and runs
``apply_conflict_file``. ``new_fingerprint`` is a digest of the new primary's row as
shown: if that row changes before the file is applied, the entry is refused as stale
instead of overwriting a change the human never saw. Unresolved entries stay pending;
applying is idempotent. A whole-document file (``{"run_id": .., "conflicts": [..]}``,
the format before JSON Lines) still loads.
"""

from __future__ import annotations

import json
import os
import re
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

INSTRUCTIONS = (
    "One conflict per line after this one. For each, set \"resolution\" to \"old\" (apply "
    "the old primary's row) or \"new\" (keep the new primary's row), then run `drorch "
    "reconcile apply <this file> --runbook <runbook>`. Values marked *** are sensitive and "
    "never shown; they are kept in the database. Entries left null stay pending. "
    "Re-applying the file changes nothing twice."
)


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ConflictEntry(_Model):
    change_id: str
    table: str
    key: dict[str, Any]
    kind: str
    reason: str
    columns: list[str]
    old_op: str | None = None
    new_op: str | None = None
    old: dict[str, Any] | None = None
    new: dict[str, Any] | None = None
    new_fingerprint: str
    resolution: Literal["old", "new"] | None = None


class ConflictFile(_Model):
    run_id: str
    database: str
    instructions: str = INSTRUCTIONS
    conflicts: list[ConflictEntry]


class _Header(_Model):
    run_id: str
    database: str
    instructions: str = INSTRUCTIONS


def write(path: str | Path, doc: ConflictFile, reset: frozenset[str] = frozenset()) -> int:
    """Write ``doc`` (see :func:`write_stream`)."""
    return write_stream(path, doc.run_id, doc.database,
                        (c.model_dump() for c in doc.conflicts), reset)


def write_stream(path: str | Path, run_id: str, database: str,
                 entries: Iterable[dict[str, Any]], reset: frozenset[str] = frozenset()) -> int:
    """Write atomically (temp file + rename), one entry per line; returns entries written.

    A rewrite of the same run (apply rerun) must not erase the human's work:
    resolutions in the existing file are carried over by ``change_id``, except
    for ids in ``reset`` (entries the human must look at again). Another run's file
    (or one a human broke) is moved aside, never overwritten.
    """
    path = Path(path)
    chosen: dict[str, str] = {}
    if path.exists():
        try:
            old_run, resolutions = _resolutions(path)
        except (ValueError, OSError):
            old_run, resolutions = None, {}
        if old_run == run_id:
            chosen = {k: v for k, v in resolutions.items() if k not in reset}
        else:
            keep_aside(path, old_run or "unreadable")
    path.parent.mkdir(parents=True, exist_ok=True)
    # a name of its own: two appliers of one run may write the file at once
    tmp = path.with_name(f"{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    n = 0
    with tmp.open("w") as f:
        f.write(json.dumps(_Header(run_id=run_id, database=database).model_dump()) + "\n")
        for entry in entries:
            if entry.get("resolution") is None and entry["change_id"] in chosen:
                entry = {**entry, "resolution": chosen[entry["change_id"]]}
            f.write(json.dumps(entry, default=str, separators=(",", ":")) + "\n")
            n += 1
    os.replace(tmp, path)
    return n


def _resolutions(path: Path) -> tuple[str, dict[str, str]]:
    """The run and the resolutions a human set, read without keeping the entries."""
    run_id, out = None, {}
    for header, entry in _parse(path):
        if header is not None:
            run_id = header.run_id
        elif entry is not None and entry.resolution is not None:
            out[entry.change_id] = entry.resolution
    if run_id is None:
        raise ValueError(f"{path}: no header line")
    return run_id, out


def keep_aside(path: Path, run_id: str) -> Path:
    """Move ``path`` to ``<stem>.<run><suffix>`` (numbered if taken) so a new run's file
    does not erase the entries of an earlier one a human has not worked through."""
    tag = re.sub(r"[^A-Za-z0-9_.-]+", "_", run_id)[:80]
    for n in range(1000):
        target = path.with_name(f"{path.stem}.{tag}{f'.{n}' if n else ''}{path.suffix}")
        if not target.exists():
            os.replace(path, target)
            return target
    raise FileExistsError(f"no free name to keep {path} aside")


def _parse(path: Path) -> Iterator[tuple[_Header | None, ConflictEntry | None]]:
    """(header, None) for the first line, then (None, entry) per line. ``ValueError``
    names the file, the line and what is wrong."""
    with path.open() as f:
        first = f.readline()
        try:
            head = json.loads(first)
        except ValueError:
            head = None
        if not isinstance(head, dict) or "conflicts" in head:  # the whole-document format
            doc = _whole_document(path, first + f.read())
            yield _Header(run_id=doc.run_id, database=doc.database), None
            for c in doc.conflicts:
                yield None, c
            return
        try:
            yield _Header.model_validate_json(first), None
        except ValidationError as e:
            raise ValueError(f"{path}:1: not a conflict file header: {e}") from e
        for lineno, line in enumerate(f, start=2):
            if not line.strip():
                continue
            try:
                yield None, ConflictEntry.model_validate_json(line)
            except ValidationError as e:
                raise ValueError(f"{path}:{lineno}: {e}") from e


def _whole_document(path: Path, text: str) -> ConflictFile:
    try:
        return ConflictFile.model_validate_json(text)
    except ValidationError as e:
        raise ValueError(f"{path}: {e}") from e


def load(path: str | Path) -> ConflictFile:
    """Parse and validate the whole file; raises ``ValueError`` naming the file, the
    line and the bad field."""
    header, entries = None, []
    for h, entry in _parse(Path(path)):
        if h is not None:
            header = h
        elif entry is not None:
            entries.append(entry)
    assert header is not None
    return ConflictFile(run_id=header.run_id, database=header.database,
                        instructions=header.instructions, conflicts=entries)
