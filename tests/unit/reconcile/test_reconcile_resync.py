"""The evidence archive keeps what the old primary's data directory holds, links followed."""

from __future__ import annotations

import tarfile
from pathlib import Path

from drorch.reconcile.resync import archive_datadir


def test_the_archive_follows_a_linked_pg_wal_and_tablespaces(tmp_path: Path) -> None:
    data, wal, spc = tmp_path / "data", tmp_path / "wal", tmp_path / "spc"
    for d in (data / "base" / "5", data / "pg_tblspc", wal, spc / "PG_15_x" / "5"):
        d.mkdir(parents=True)
    (data / "base" / "5" / "1259").write_bytes(b"catalog")
    (wal / "000000010000000000000003").write_bytes(b"wal")
    (spc / "PG_15_x" / "5" / "16390").write_bytes(b"rows in a tablespace")
    (data / "pg_wal").symlink_to(wal)
    (data / "pg_tblspc" / "16389").symlink_to(spc)

    archive = archive_datadir(data, tmp_path / "evidence" / "old.tar.gz")

    with tarfile.open(archive) as tar:
        files = {m.name: tar.extractfile(m).read() for m in tar.getmembers()  # type: ignore[union-attr]
                 if m.isfile()}
    assert files == {"data/base/5/1259": b"catalog",
                     "data/pg_wal/000000010000000000000003": b"wal",
                     "data/pg_tblspc/16389/PG_15_x/5/16390": b"rows in a tablespace"}
    assert archive_datadir(data, archive) == archive  # kept, not rewritten
