"""Where a runbook's state lives (journal, audit log, reports, lab files), chosen so
that it never depends on the directory drorch is run from: the journal is the only
record of which region serves writes, and a second state directory (another cwd)
would believe the runbook's primary still does.

- ``state_dir`` given in the runbook: an absolute path as is; a relative one is
  relative to the runbook file's directory, not the current directory.
- not given (or empty): a per-user location, ``$XDG_STATE_HOME/drorch/<runbook>``,
  by default ``~/.local/state/drorch/<runbook>``.
"""

from __future__ import annotations

import os
from pathlib import Path


def default_state_dir(runbook_name: str) -> Path:
    """The per-user state directory of a runbook that names none."""
    base = Path(os.environ.get("XDG_STATE_HOME") or "").expanduser()
    if not base.is_absolute():  # unset, empty or relative: the XDG Base Directory spec
        base = Path.home() / ".local" / "state"  # says to ignore a relative path
    return base / "drorch" / runbook_name


def resolve_state_dir(value: str | None, runbook_name: str, runbook_dir: Path | None) -> str:
    """The absolute state directory for a runbook's ``state_dir`` value.

    ``runbook_dir``: the runbook file's directory, which a relative value is taken from
    (None for a runbook built in memory: then the current directory, as Python would)."""
    if not value:
        return str(default_state_dir(runbook_name))
    path = Path(value).expanduser()
    if not path.is_absolute():
        path = (runbook_dir or Path.cwd()) / path
    return str(path.resolve())
