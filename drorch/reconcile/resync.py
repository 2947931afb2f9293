"""Rebuild the old primary as a replica of the new one, then wait until it caught up.

pg_rewind first (fast: copies only what changed); a fresh base backup when
rewind is impossible (WAL back to the last common checkpoint gone, no
wal_log_hints). Both erase the old primary's divergent rows, so the caller
must say they were captured (``captured=True``). The node's own configuration
files (port, per-node settings, pg_hba) are saved before and restored after,
because pg_rewind copies the source's. The new primary is CHECKPOINTed first:
PG 15 promotes without waiting for its end-of-recovery checkpoint, and
pg_rewind reads the timeline from the control file ("no rewind required"
otherwise). The replaced data directory is kept aside by default.
"""

from __future__ import annotations

import os
import re
import shutil
import tarfile
import time
from pathlib import Path

from psycopg.conninfo import conninfo_to_dict, make_conninfo

from drorch.reconcile._db import connect, scalar
from drorch.reconcile.fence import unfence_settings
from drorch.reconcile.model import ResyncResult
from drorch.reconcile.node import PgNodeLike, run_tool, write_owned

OWN_FILES = ("postgresql.conf", "pg_hba.conf", "pg_ident.conf")


def _timeline(dsn: str) -> int:
    with connect(dsn) as c:
        names = [r[0] for r in c.execute("SELECT name FROM pg_ls_waldir()")
                 if re.match(r"^[0-9A-F]{8}\.history$", r[0])]
    return int(max(names)[:8], 16) if names else 1


def _follows(node_dsn: str, source_dsn: str) -> bool:
    """The node streams from a server on the source's current timeline."""
    try:
        with connect(node_dsn) as c:
            row = c.execute("SELECT pg_is_in_recovery(), (SELECT received_tli FROM "
                            "pg_stat_wal_receiver WHERE status = 'streaming')").fetchone()
    except Exception:
        return False
    return bool(row and row[0] and row[1] is not None and int(row[1]) == _timeline(source_dsn))


def wait_caught_up(replica_dsn: str, primary_dsn: str, timeout_s: float = 300) -> str:
    """Wait until the replica replayed the primary's flush LSN as of this call.

    Returns the replica's replay LSN. Raises TimeoutError."""
    with connect(primary_dsn) as p:
        target = str(scalar(p, "SELECT pg_current_wal_flush_lsn()::text"))
    deadline = time.monotonic() + timeout_s
    with connect(replica_dsn) as r:
        while True:
            row = r.execute("SELECT pg_last_wal_replay_lsn()::text, "
                            "pg_last_wal_replay_lsn() >= %s::pg_lsn", (target,)).fetchone()
            if row and row[1]:
                return str(row[0])
            if time.monotonic() > deadline:
                raise TimeoutError(f"replica did not reach {target} in {timeout_s:.0f} s")
            time.sleep(0.05)


def _split_password(dsn: str) -> tuple[str, dict[str, str]]:
    """A DSN without its password, and the environment that carries it instead."""
    parts = conninfo_to_dict(dsn)
    password = parts.pop("password", None)
    env = dict(os.environ)
    if password:
        env["PGPASSWORD"] = str(password)
    return make_conninfo(**{k: str(v) for k, v in parts.items()}), env


def _base_backup(datadir: Path, dsn: str, keep_old: bool, no_sync: bool) -> str | None:
    st = datadir.stat()
    kept = None
    if keep_old:
        kept_path = datadir.with_name(f"{datadir.name}.diverged-{int(time.time())}")
        datadir.rename(kept_path)
        kept = str(kept_path)
    else:
        shutil.rmtree(datadir)
    datadir.mkdir(mode=0o700)
    if os.geteuid() == 0:
        os.chown(datadir, st.st_uid, st.st_gid)
    clean, env = _split_password(dsn)
    args = ["pg_basebackup", "-D", str(datadir), "-d", clean, "-R", "-X", "stream", "-c", "fast"]
    run_tool(args + (["--no-sync"] if no_sync else []), datadir, env=env)
    return kept


def archive_datadir(datadir: Path, archive: Path) -> Path:
    """Keep the stopped node's data directory as ``archive`` (tar, gzip level 1: the
    evidence of what the old primary held before it is rewound). Written to a temporary
    name and renamed, so an archive that exists is complete; one that exists is kept
    (a rerun after a kill must not replace it with the rewound directory).

    Symbolic links are followed: ``pg_wal`` may point elsewhere (``initdb --waldir``)
    and each tablespace is a link under ``pg_tblspc`` ("Database File Layout",
    PostgreSQL 15 docs, 73.1); archived as links, the WAL and the tablespaces' rows
    would be missing from the evidence."""
    if archive.exists():
        return archive
    archive.parent.mkdir(parents=True, exist_ok=True)
    partial = archive.with_name(archive.name + ".partial")
    with tarfile.open(partial, "w:gz", compresslevel=1) as tar:
        tar.dereference = True
        tar.add(datadir, arcname=datadir.name)
    os.replace(partial, archive)
    return archive


def resync_as_replica(node: PgNodeLike, source: str | PgNodeLike, *, captured: bool,
                      timeout_s: float = 300, keep_old_datadir: bool = True,
                      no_sync: bool = False, evidence: Path | None = None) -> ResyncResult:
    """Make ``node`` a streaming replica of ``source`` (the new primary) and wait for it.

    Returns at once when the node already streams from the source's timeline.
    ``evidence``: where to archive the stopped data directory before anything
    rewrites it (see :func:`archive_datadir`). Raises ValueError unless ``captured``;
    RuntimeError when neither rewind nor base backup works; TimeoutError when it does
    not catch up in time.
    """
    if not captured:
        raise ValueError("capture the divergent rows first (find_divergence): resync erases them")
    t0 = time.monotonic()
    source_dsn = source if isinstance(source, str) else source.dsn()
    if node.is_running() and _follows(node.dsn(), source_dsn):
        lsn = wait_caught_up(node.dsn(), source_dsn, timeout_s)
        return ResyncResult("already-replica", "already streaming from the new primary",
                            time.monotonic() - t0, None, lsn)
    datadir = node.datadir
    saved = {n: (datadir / n).read_text() for n in OWN_FILES if (datadir / n).exists()}
    node.stop("fast")
    kept_evidence = str(archive_datadir(datadir, evidence)) if evidence is not None else None
    with connect(source_dsn) as c:
        c.execute("CHECKPOINT")
    clean, env = _split_password(source_dsn)
    kept = None
    try:
        out = run_tool(["pg_rewind", "--target-pgdata", str(datadir), "--source-server", clean,
                        "--write-recovery-conf"] + (["--no-sync"] if no_sync else []),
                       datadir, env=env)
        if "no rewind required" in out and not (datadir / "standby.signal").exists():
            raise RuntimeError("pg_rewind found nothing to do but wrote no recovery settings")
        method, reason = "rewind", "pg_rewind from the new primary"
    except RuntimeError as e:
        kept = _base_backup(datadir, source_dsn, keep_old_datadir, no_sync)
        method = "basebackup"
        reason = f"pg_rewind failed ({str(e).splitlines()[0][:200]}): fresh base backup"
    for name, text in saved.items():
        write_owned(datadir / name, text, datadir)
    unfence_settings(node)
    node.start()
    lsn = wait_caught_up(node.dsn(), source_dsn, timeout_s)
    return ResyncResult(method, reason, time.monotonic() - t0, kept, lsn,  # type: ignore[arg-type]
                        kept_evidence)
