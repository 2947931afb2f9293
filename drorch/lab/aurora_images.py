"""Lab only: what Aurora does with the old writer's volume after an unplanned global
failover, done to the lab's real clusters by its moto server
(:mod:`drorch.lab.moto_rds`) and by ``drorch lab heal``.

Aurora keeps a snapshot of the old primary's volume, ``rds:unplanned-global-failover-
...``, and once the old primary's region is back it rebuilds that cluster as a secondary
of the new primary, its unreplicated writes gone from it (they live on only in the
snapshot): Aurora User Guide, "Recovering an Amazon Aurora global database from an
unplanned outage". In the lab:

* :func:`take_image`: at the failover's completion, the old writer's data directory is
  copied aside (the lab's region is dead or frozen then, so the copy is the crash-
  consistent volume a snapshot is); the snapshot moto records names the copy.
* :func:`restore_image`: ``RestoreDBClusterFromSnapshot`` of that snapshot (or of a copy
  of it) starts a cluster of its own from a copy of the image, on a free port.
* :func:`drop_restored`: ``DeleteDBCluster`` of such a cluster stops it and removes its
  files.
* :func:`rejoin_as_secondary`: ``lab heal`` of the old writer's region makes its cluster
  a streaming standby of the new writer, as Aurora makes it a secondary.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from psycopg.conninfo import make_conninfo

from drorch.lab.rds_nodes import lab_node
from drorch.reconcile.node import write_owned

STATE_FILES = ("postmaster.pid", "standby.signal", "recovery.signal")
"""What a copy of a data directory must not keep to start as a primary of its own."""


def _copy(src: Path, dst: Path) -> None:
    """``cp -a`` (owners and modes kept: the server runs as the directory's owner)."""
    subprocess.run(["cp", "-a", str(src), str(dst)], check=True, capture_output=True,
                   timeout=300)


def take_image(datadir: str, stamp: str) -> str:
    """A copy of the data directory ``datadir`` beside it; returns its path."""
    image = Path(f"{datadir}.failover-image-{stamp}")
    if not image.exists():
        _copy(Path(datadir), image)
    return str(image)


def restore_image(image: str, identifier: str, dsn: str,
                  port: int) -> tuple[str, str, int, str]:
    """A cluster of its own from a copy of ``image``, started as a primary on ``port``.
    ``dsn``: the old writer's connection string (its user and host are kept).
    Returns (data directory, connection string, port, log file). Raises
    ``RuntimeError`` when it does not start."""
    datadir = Path(f"{image}.restored-{identifier}")
    if datadir.exists():
        shutil.rmtree(datadir)
    _copy(Path(image), datadir)
    for name in STATE_FILES:
        (datadir / name).unlink(missing_ok=True)
    conf = datadir / "postgresql.conf"
    write_owned(conf, conf.read_text() + f"\n# drorch lab: restored as {identifier}\n"
                f"port = {port}\nprimary_conninfo = ''\n", datadir)
    log = Path(f"{datadir}.log")
    log.touch()
    shutil.chown(log, user=datadir.owner(), group=datadir.group())
    restored_dsn = make_conninfo(dsn, port=str(port))
    try:
        lab_node(datadir, restored_dsn, log).start()
    except Exception:
        drop_restored(str(datadir), restored_dsn, str(log))
        raise
    return str(datadir), restored_dsn, port, str(log)


def drop_restored(datadir: str, dsn: str, logfile: str) -> None:
    """Stop the restored cluster and remove its files."""
    path = Path(datadir)
    if path.exists():
        lab_node(path, dsn, Path(logfile)).stop("immediate")
        shutil.rmtree(path, ignore_errors=True)
    Path(logfile).unlink(missing_ok=True)


def kept_images(datadir: Path) -> list[Path]:
    """Images and restored clusters beside the lab's ``datadir`` (for ``lab down``)."""
    return sorted(p for p in datadir.parent.glob(f"{datadir.name}.failover-image-*")
                  if p.is_dir())


def rejoin_as_secondary(node: object, writer_dsn: str) -> str:
    """The old writer's cluster rebuilt as a streaming standby of the writer at
    ``writer_dsn`` (``pg_rewind``, else a base backup): its unreplicated writes are
    gone from it, as from Aurora's rebuilt secondary; the failover image keeps them.
    Returns how."""
    from drorch.reconcile.resync import resync_as_replica

    return resync_as_replica(node, writer_dsn, captured=True,  # type: ignore[arg-type]
                             keep_old_datadir=False, no_sync=True).method
