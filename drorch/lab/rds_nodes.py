"""Lab only: what renaming an RDS instance and creating a read replica do to the lab's
real PostgreSQL clusters, done by its moto server (:mod:`drorch.lab.moto_rds`).

On RDS an instance's endpoint address follows its identifier
(``<identifier>.<hash>.<region>.rds.amazonaws.com``): renamed with
``ModifyDBInstance(NewDBInstanceIdentifier=...)`` it answers at the new name, and a new
instance created under the old name answers at the old address (Amazon RDS User Guide,
"Renaming a DB instance"). drorch's RDS failback relies on that: the old primary is
renamed and kept, and a fresh cross-region read replica takes its identifier, so the
runbook's endpoint stays true.

In the lab an identifier's address is a port on 127.0.0.1 (the ``drorch:lab-dsn`` tag),
so the same is done to the real clusters:

* :func:`vacate` (a rename): the instance's cluster is stopped cleanly, its data
  directory moved to ``<data directory>.<new identifier>`` and started there on a free
  port; the slot it left (data directory, port, log) is returned, to be recorded on the
  renamed instance as the ``drorch:lab-vacated`` tag.
* :func:`fill` (a read replica created under the vacated identifier): a base backup of
  the source's cluster into the vacated data directory, streaming from the source
  (``pg_basebackup -R``), on the vacated port.

The lab's own commands (``lab fail``, ``lab heal``) keep naming the region's data
directory and port, which the new replica now holds; ``lab down`` stops the renamed
clusters too (:func:`kept_clusters`).
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

from psycopg.conninfo import conninfo_to_dict, make_conninfo

from drorch.adapters.nodes import LocalPgNode
from drorch.config import Endpoint
from drorch.lab.ports import free_port
from drorch.reconcile.node import run_tool, write_owned

VACATED_TAG = "drorch:lab-vacated"
"""On a renamed instance: the slot (JSON of :class:`Slot`) its old identifier left."""


@dataclass(frozen=True)
class Slot:
    """Where an identifier's cluster lives in the lab: its data directory, port, log and
    connection string (the ``drorch:lab-*`` tags of the instance that has it)."""

    identifier: str
    datadir: str
    port: int
    logfile: str
    dsn: str

    def to_tag(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @staticmethod
    def from_tag(value: str) -> Slot:
        return Slot(**json.loads(value))


def lab_node(datadir: Path, dsn: str, logfile: Path) -> LocalPgNode:
    """The lab's cluster in ``datadir``, reached at ``dsn``, as node control (``pg_ctl``
    as the data directory's owner, logging to ``logfile``)."""
    info = conninfo_to_dict(dsn)
    endpoint = Endpoint(host=str(info.get("host") or "127.0.0.1"), port=int(info["port"]),
                        dbname="postgres", user=str(info.get("user") or "postgres"))
    return LocalPgNode(datadir.resolve(), endpoint.port, endpoint, logfile)


def _with_port(dsn: str, port: int) -> str:
    return make_conninfo(dsn, port=str(port))


def vacate(identifier: str, new_identifier: str, datadir: str, dsn: str,
           logfile: str) -> tuple[Slot, Slot]:
    """Move the cluster of ``identifier`` aside for its rename to ``new_identifier``.
    Returns (the slot it left, where it runs now). Raises ``RuntimeError`` when it cannot
    be stopped, moved or started again (then it is started where it was, if it can be)."""
    here = Path(datadir)
    left = Slot(identifier, str(here), int(conninfo_to_dict(dsn)["port"]), logfile, dsn)
    moved = here.with_name(f"{here.name}.{new_identifier}")
    if moved.exists():
        raise RuntimeError(f"{moved} exists already")
    port = free_port()
    node = lab_node(here, dsn, Path(logfile))
    node.stop("fast")
    here.rename(moved)
    conf = moved / "postgresql.conf"
    write_owned(conf, conf.read_text() + f"\n# drorch lab: renamed to {new_identifier}\n"
                f"port = {port}\n", moved)
    now = Slot(new_identifier, str(moved), port, f"{logfile}.{new_identifier}",
               _with_port(dsn, port))
    Path(now.logfile).touch()
    if os.geteuid() == 0:
        st = moved.stat()
        os.chown(now.logfile, st.st_uid, st.st_gid)
    lab_node(moved, now.dsn, Path(now.logfile)).start()
    return left, now


def fill(slot: Slot, source_dsn: str, moved_datadir: str) -> None:
    """A streaming standby of the cluster at ``source_dsn`` in ``slot`` (its data
    directory must be free), configured like the cluster that left it
    (``moved_datadir``'s ``postgresql.conf``, ``pg_hba.conf``, ``pg_ident.conf``) on the
    slot's port, started. Raises ``RuntimeError`` with ``pg_basebackup``'s words."""
    datadir, moved = Path(slot.datadir), Path(moved_datadir)
    if datadir.exists():
        raise RuntimeError(f"{datadir} is not free")
    datadir.mkdir(mode=0o700)
    st = moved.stat()
    if os.geteuid() == 0:
        os.chown(datadir, st.st_uid, st.st_gid)
    try:
        run_tool(["pg_basebackup", "-D", str(datadir), "-d", source_dsn, "-R", "-X", "stream",
                  "-c", "fast", "--no-sync"], datadir, timeout=120)
    except RuntimeError:
        shutil.rmtree(datadir, ignore_errors=True)
        raise
    for name in ("pg_hba.conf", "pg_ident.conf"):
        write_owned(datadir / name, (moved / name).read_text(), datadir)
    write_owned(datadir / "postgresql.conf", (moved / "postgresql.conf").read_text()
                + f"\n# drorch lab: replica {slot.identifier}\nport = {slot.port}\n", datadir)
    lab_node(datadir, slot.dsn, Path(slot.logfile)).start()


def kept_clusters(datadir: Path) -> list[Path]:
    """The renamed clusters beside the lab's ``datadir`` (``<datadir>.<identifier>``)."""
    return sorted(p for p in datadir.parent.glob(f"{datadir.name}.*")
                  if p.is_dir() and (p / "PG_VERSION").exists())
