"""Importing the lab's extended moto server starts nothing: it only adds
SwitchoverGlobalCluster and FailoverGlobalCluster to moto's RDS classes (once)."""

from __future__ import annotations

import importlib
import threading

import psutil
from moto.core.utils import camelcase_to_underscores, method_names_from_class


def _listening() -> set[tuple[str, int]]:
    return {(c.laddr.ip, c.laddr.port) for c in psutil.Process().net_connections()
            if c.status == psutil.CONN_LISTEN}


def test_import_adds_the_actions_and_starts_nothing() -> None:
    threads, sockets = set(threading.enumerate()), _listening()
    module = importlib.import_module("drorch.lab.moto_server")
    from moto.rds.models import RDSBackend
    from moto.rds.responses import RDSResponse

    assert set(threading.enumerate()) == threads
    assert _listening() == sockets
    # moto's server dispatches an action to the response method of its snake_case name.
    names = method_names_from_class(RDSResponse)
    for action in ("SwitchoverGlobalCluster", "FailoverGlobalCluster"):
        assert camelcase_to_underscores(action) in names
        assert hasattr(RDSBackend, camelcase_to_underscores(action))

    # Installing again wraps nothing twice.
    describe = RDSBackend.describe_global_clusters
    module.install()
    assert RDSBackend.describe_global_clusters is describe
    assert module._moto["describe_global_clusters"] is not describe
