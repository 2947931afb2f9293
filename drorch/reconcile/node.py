"""The node control that fencing and resync need, and safe edits of its data directory.

:class:`PgNodeLike` is satisfied by ``drorch.lab.postgres.PgNode``; a production
adapter (systemd, Patroni-less VMs) provides the same five members. Files
written into a data directory get the directory owner's uid/gid and mode 0600:
the server refuses files it cannot read, and runs as that owner, not root.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Protocol

PG_BIN = Path(os.environ.get("DRORCH_PG_BIN", "/usr/lib/postgresql/15/bin"))


class PgNodeLike(Protocol):
    """A PostgreSQL cluster drorch may stop, start and rewrite.

    ``start``/``stop`` block until done and are safe to call twice (stopping a
    stopped node is a no-op). ``dsn()`` reaches it as a superuser.
    """

    datadir: Path
    port: int

    def dsn(self, dbname: str = "postgres", user: str = "postgres") -> str: ...

    def start(self) -> None: ...

    def stop(self, mode: str = "fast") -> None: ...

    def is_running(self) -> bool: ...


def write_owned(path: Path, text: str, like: Path) -> None:
    """Write ``text`` to ``path`` owned like ``like`` (the data directory), mode 0600."""
    st = like.stat()
    tmp = path.with_name(path.name + ".drorch-tmp")
    tmp.write_text(text)
    os.chmod(tmp, 0o600)
    if os.geteuid() == 0:
        os.chown(tmp, st.st_uid, st.st_gid)
    os.replace(tmp, path)


def set_conf_lines(conf: Path, settings: dict[str, str], marker: str, like: Path) -> None:
    """Drop every line setting one of ``settings`` from ``conf``, append them under ``marker``.

    Idempotent: a second call leaves the same file."""
    lines = conf.read_text().splitlines() if conf.exists() else []
    keys = set(settings)
    kept = [ln for ln in lines
            if ln.split("=", 1)[0].strip() not in keys and ln.strip() != f"# {marker}"]
    kept.append(f"# {marker}")
    kept += [f"{k} = {v}" for k, v in settings.items()]
    write_owned(conf, "\n".join(kept) + "\n", like)


def run_tool(args: list[str], owner_of: Path, *, timeout: float = 600,
             env: dict[str, str] | None = None) -> str:
    """Run a PostgreSQL binary as the owner of ``owner_of`` (``runuser`` when we are root).

    Raises RuntimeError with the tool's stderr on failure. Passwords never go
    on the command line (``ps`` shows it): callers pass them in ``env``
    (PGPASSWORD)."""
    cmd = [str(PG_BIN / args[0]), *args[1:]]
    if os.geteuid() == 0:
        import pwd

        owner = pwd.getpwuid(owner_of.stat().st_uid).pw_name
        if owner != "root":
            cmd = ["runuser", "-u", owner, "--", *cmd]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"{args[0]} failed ({proc.returncode}): "
                           f"{(proc.stderr or proc.stdout).strip()[-2000:]}")
    return proc.stdout + proc.stderr
