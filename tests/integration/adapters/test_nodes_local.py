"""drorch's own node control drives a real cluster: start, stop, status, as the data
directory's owner (the server refuses root)."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import psycopg

from drorch.adapters.nodes import local_node
from drorch.config import DatabasePair, LocalNode
from drorch.lab.ports import free_port
from drorch.lab.postgres import PgNode
from tests.conftest import needs_postgres


@needs_postgres
def test_local_node_starts_stops_and_tells_whether_it_runs() -> None:
    # not pytest's tmp_path: as root the server runs as postgres, which cannot enter it
    tmp_path = Path(tempfile.mkdtemp(prefix="drorch-node-"))
    os.chmod(tmp_path, 0o755)
    lab_node = PgNode("n", tmp_path / "pg" / "data", free_port(), tmp_path / "pg")
    lab_node.init_primary()
    db = DatabasePair.model_validate({"name": "main", "endpoints": {"region-a": {
        "host": "127.0.0.1", "port": lab_node.port, "user": "postgres"}}})
    node = local_node(db, "region-a", LocalNode(data_directory=str(lab_node.datadir),
                                                log_file=str(lab_node.logfile)), tmp_path)
    try:
        assert not node.is_running()
        node.start()
        assert node.is_running() and lab_node.is_running()
        with psycopg.connect(node.dsn()) as c:
            assert c.execute("SELECT current_setting('data_directory')").fetchone() == (
                str(lab_node.datadir),)
        node.start()  # already running: nothing happens
        node.stop("fast")
        assert not node.is_running() and not lab_node.is_running()
        node.stop()  # stopped: nothing happens
    finally:
        lab_node.destroy()
        shutil.rmtree(tmp_path, ignore_errors=True)
