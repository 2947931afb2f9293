"""Node control by database kind: the means to stop, start and rewrite a database node.

A failback fences the old primary (restart it as a standby with no upstream), keeps
evidence of its data directory and rebuilds it as a replica (``pg_rewind`` or a base
backup). Those need control of the node itself, not only SQL. Which control depends on
the database's ``kind``:

* ``postgres`` with ``node`` on an endpoint: a cluster on the host drorch runs on,
  controlled with ``pg_ctl`` as the data directory's owner (:class:`LocalPgNode`). The
  lab's clusters are such nodes; a self-managed server is one when drorch runs on its
  host.
* ``rds``: RDS manages the node; the failback goes through the RDS API
  (:mod:`drorch.steps.rds_failback`) and needs no node control, and asking says so.
* ``postgres`` without ``node``: drorch has no means to control it. Asking for it raises
  :class:`NodeControlUnavailable`, naming the database, the region, the operations that
  need it and the runbook field that would give it. Failover never needs it.

The engine gets a :data:`NodeControl` from :func:`node_control_for`; it never imports the
lab.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path

from drorch.config import DatabasePair, Endpoint, LocalNode, Runbook
from drorch.reconcile.node import PG_BIN, PgNodeLike

NEEDS_NODE = ("fencing the old primary", "the evidence archive of its data directory",
              "pg_rewind or a base backup to rebuild it as a replica")
"""What a failback asks of node control (failover asks nothing of it)."""


class NodeControlUnavailable(RuntimeError):
    """This database node cannot be stopped, started or rewritten by drorch; the message
    names the operations and the runbook field that would allow them."""


@dataclass
class LocalPgNode:
    """A PostgreSQL cluster on this host, controlled with ``pg_ctl`` (PostgreSQL 15 docs,
    "pg_ctl"), run as the owner of its data directory: the server refuses to run as root.

    ``datadir``: the data directory with symbolic links resolved (the server's user must
    be able to enter every parent, which a link under ``/root`` would hide); ``port``
    and ``endpoint``: how drorch reaches it over SQL."""

    datadir: Path
    port: int
    endpoint: Endpoint
    log_file: Path
    pg_bin: Path = PG_BIN

    def dsn(self, dbname: str = "postgres", user: str | None = None) -> str:
        """A connection string to this node (``dbname``; the endpoint's user unless
        ``user``), with the endpoint's timeouts and password source."""
        extra = {"user": user} if user else {}
        return self.endpoint.dsn(dbname, **extra)

    def _pg_ctl(self, *args: str, timeout: float) -> subprocess.CompletedProcess[str]:
        cmd = [str(self.pg_bin / "pg_ctl"), "-D", str(self.datadir), *args]
        if os.geteuid() == 0:
            import pwd

            owner = pwd.getpwuid(self.datadir.stat().st_uid).pw_name
            if owner != "root":
                cmd = ["runuser", "-u", owner, "--", *cmd]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)

    def start(self, timeout: int = 60) -> None:
        """Start the server and wait until it accepts connections (``pg_ctl start -w``).
        Raises ``RuntimeError`` with ``pg_ctl``'s words when it does not."""
        if self.is_running():
            return
        proc = self._pg_ctl("-l", str(self.log_file), "-w", "-t", str(timeout), "start",
                            timeout=timeout + 10)
        if proc.returncode != 0:
            raise RuntimeError(f"pg_ctl start {self.datadir} failed ({proc.returncode}): "
                               f"{(proc.stderr or proc.stdout).strip()[-2000:]}; see "
                               f"{self.log_file}")

    def stop(self, mode: str = "fast") -> None:
        """Stop the server and wait (``pg_ctl stop -m MODE -w``); a stopped node is left
        as it is."""
        if not self.is_running():
            return
        proc = self._pg_ctl("-m", mode, "-w", "stop", timeout=120)
        if proc.returncode != 0 and self.is_running():
            raise RuntimeError(f"pg_ctl stop {self.datadir} failed ({proc.returncode}): "
                               f"{(proc.stderr or proc.stdout).strip()[-2000:]}")

    def is_running(self) -> bool:
        """``pg_ctl status``: 0 when a server runs on this data directory, 3 when not
        (4: no data directory, which is not running either)."""
        return self._pg_ctl("status", timeout=30).returncode == 0


NodeControl = Callable[[str, str], PgNodeLike]
"""(database, region) -> its node. Raises :class:`NodeControlUnavailable`."""


def node_path(value: str, state_dir: str | Path) -> Path:
    """A ``node`` path with links followed; a relative one is taken from the runbook's
    state directory (where the lab keeps its clusters), never from the current one."""
    path = Path(value).expanduser()
    return (path if path.is_absolute() else Path(state_dir) / path).resolve()


def local_node(db: DatabasePair, region: str, node: LocalNode,
               state_dir: str | Path) -> LocalPgNode:
    """The :class:`LocalPgNode` an endpoint's ``node`` block names."""
    ep = db.endpoints[region]
    datadir = node_path(node.data_directory, state_dir)
    log_file = node_path(node.log_file, state_dir) if node.log_file else \
        datadir.parent / f"{db.name}-{region}.log"
    return LocalPgNode(datadir, ep.port, ep, log_file,
                       Path(node.pg_bin) if node.pg_bin else PG_BIN)


def node_control_for(runbook: Runbook) -> NodeControl:
    """The runbook's node control, chosen per database by its kind and endpoint."""
    def control(db_name: str, region: str) -> PgNodeLike:
        db = runbook.database(db_name)
        ep = db.endpoints.get(region)
        if ep is None:
            raise NodeControlUnavailable(f"database {db_name} has no endpoint in {region}")
        if db.kind == "postgres" and ep.node is not None:
            return local_node(db, region, ep.node, runbook.state_dir)
        if db.kind == "rds":
            raise NodeControlUnavailable(
                f"database {db_name} in {region} (kind rds): RDS manages the node; drorch "
                "fails it back through the RDS API (fence, snapshot, a new cross-region "
                "read replica), not by controlling the node")
        if db.kind == "aurora-global":
            raise NodeControlUnavailable(
                f"database {db_name} in {region} (kind aurora-global): Aurora manages the "
                "nodes. drorch fails back after a switchover (nothing diverged) and after a "
                "managed failover (it restores and reconciles Aurora's snapshot of the old "
                "writer); after a detach-and-promote the old writer is a standalone "
                "writer drorch cannot fence or rebuild: fail back by hand")
        raise NodeControlUnavailable(
            f"database {db_name} in {region} (kind {db.kind}): {', '.join(NEEDS_NODE)} need "
            "control of the node, and this runbook gives none. When drorch runs on the "
            f"database host, set databases[{db_name}].endpoints.{region}.node.data_directory; "
            "otherwise rebuild the node by hand (the failover itself needs no node control)")
    return control


def needs_node_control(db: DatabasePair, switched_over: bool) -> bool:
    """Whether failing back ``db`` needs control of its old primary's node: not for RDS
    (done through the RDS API), nor for an Aurora global database whose failover was a
    switchover (Aurora has made the old writer a secondary of the new one and nothing
    diverged: the way back is another switchover); for every other kind and path."""
    if db.kind == "rds":
        return False  # fenced, kept and replaced through the RDS API
    return not (db.kind == "aurora-global" and switched_over)  # detach: it would


def node_control_problems(runbook: Runbook, region: str | None = None,
                          switched_over: Collection[str] = ()) -> list[str]:
    """Why a failback to ``region`` (every region when None) could not control the nodes
    it must: one sentence per database and region, empty when it can. ``switched_over``:
    databases whose failover was (or, in a drill, will be) a switchover."""
    control = node_control_for(runbook)
    out = []
    for db in runbook.databases:
        if not needs_node_control(db, db.name in switched_over):
            continue
        for name in db.endpoints if region is None else [region]:
            try:
                control(db.name, name)
            except NodeControlUnavailable as e:
                out.append(str(e))
    return out
