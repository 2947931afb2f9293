"""The lab's extended moto server: importing it starts nothing and loads no RDS models
(they cost ~1.4 s of CPU per lab); the RDS additions go in when moto first asks for its
RDS backend, once."""

from __future__ import annotations

import importlib
import subprocess
import sys
import threading

import psutil
from moto.core.utils import camelcase_to_underscores, method_names_from_class


def _listening() -> set[tuple[str, int]]:
    return {(c.laddr.ip, c.laddr.port) for c in psutil.Process().net_connections()
            if c.status == psutil.CONN_LISTEN}


def test_the_server_entry_loads_no_rds_models_until_rds_is_asked_for() -> None:
    code = ("import sys, drorch.lab.moto_server as m; m.install_on_first_rds_use(); "
            "print('moto.rds.models' in sys.modules); "
            "from moto import backends; backends.get_backend('rds'); "
            "from moto.rds.models import RDSBackend; "
            "print(hasattr(RDSBackend, 'switchover_global_cluster'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.split()
    assert out == ["False", "True"]


def test_importing_the_additions_adds_the_actions_and_starts_nothing() -> None:
    threads, sockets = set(threading.enumerate()), _listening()
    module = importlib.import_module("drorch.lab.moto_rds")
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
