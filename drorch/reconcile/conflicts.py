"""The conflict file: what a human resolves, as a pydantic model (pure, no database).

One JSON document per run. Each conflict shows the key, the columns that
differ and both rows with sensitive columns masked; the human sets
``resolution`` to ``old`` (take the old primary's row) or ``new`` (keep the
new primary's) and runs ``apply_conflict_file``. ``new_fingerprint`` is a
digest of the new primary's row as shown: if that row changes before the file
is applied, the entry is refused as stale instead of overwriting a change the
human never saw. Unresolved entries stay pending; applying is idempotent.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

INSTRUCTIONS = (
    "For each conflict set \"resolution\" to \"old\" (apply the old primary's row) or "
    "\"new\" (keep the new primary's row), then run `drorch reconcile apply <this file> "
    "--runbook <runbook>`. Values marked *** are sensitive and never shown; they are kept "
    "in the database. "
    "Entries left null stay pending. Re-applying the file changes nothing twice."
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


def write(path: str | Path, doc: ConflictFile, reset: frozenset[str] = frozenset()) -> None:
    """Write atomically (temp file + rename), keeping resolutions a human already set.

    A rewrite of the same run (apply rerun) must not erase the human's work:
    resolutions in the existing file are carried over by ``change_id``, except
    for ids in ``reset`` (entries the human must look at again).
    """
    path = Path(path)
    if path.exists():
        try:
            old = load(path)
        except (ValueError, OSError):
            old = None
        if old is not None and old.run_id == doc.run_id:
            chosen = {c.change_id: c.resolution for c in old.conflicts
                      if c.change_id not in reset}
            for c in doc.conflicts:
                c.resolution = c.resolution or chosen.get(c.change_id)
        else:  # another run's file (or one a human broke): kept beside, never overwritten
            keep_aside(path, old.run_id if old is not None else "unreadable")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(doc.model_dump(), indent=2, default=str) + "\n")
    os.replace(tmp, path)


def keep_aside(path: Path, run_id: str) -> Path:
    """Move ``path`` to ``<stem>.<run>.json`` (numbered if taken) so a new run's file
    does not erase the entries of an earlier one a human has not worked through."""
    tag = re.sub(r"[^A-Za-z0-9_.-]+", "_", run_id)[:80]
    for n in range(1000):
        target = path.with_name(f"{path.stem}.{tag}{f'.{n}' if n else ''}{path.suffix}")
        if not target.exists():
            os.replace(path, target)
            return target
    raise FileExistsError(f"no free name to keep {path} aside")


def load(path: str | Path) -> ConflictFile:
    """Parse and validate; raises ``ValueError`` (pydantic) naming the bad field."""
    return ConflictFile.model_validate_json(Path(path).read_text())
