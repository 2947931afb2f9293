"""The lab's moto server: moto's own, with Aurora global switchover and failover and
RDS read replica promotion as AWS does them (and bound to the lab's real clusters).

Run as ``python -m drorch.lab.moto_server -H 127.0.0.1 -p PORT`` (the arguments of
``python -m moto.server``). What the additions do and why: :mod:`drorch.lab.moto_rds`
and ``docs/moto-extensions.md``. They are installed when the server first loads its
RDS backend, not at start: importing moto's RDS models costs ~1.4 s of CPU (they
import EC2's), and most labs never make an RDS call.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from drorch.lab import require_lab_extra

SWITCH_SECONDS_ENV = "DRORCH_MOTO_GLOBAL_SWITCH_SECONDS"
"""Seconds a switchover or failover stays in progress (default 0: done by the next read)."""


def switch_seconds() -> float:
    """:data:`SWITCH_SECONDS_ENV` as seconds (>= 0); ``ValueError`` naming it otherwise."""
    raw = os.environ.get(SWITCH_SECONDS_ENV, "0")
    try:
        return max(0.0, float(raw))
    except ValueError:
        raise ValueError(f"{SWITCH_SECONDS_ENV}={raw!r} is not a number of seconds") from None


LAB_ADDRESS_TAG = "drorch:lab-address"
"""Lab only: the address ``Endpoint.Address`` answers instead of moto's made-up name."""

LAB_DSN_TAG = "drorch:lab-dsn"
"""Lab only: the libpq connection string of the real cluster behind the instance."""

LAB_DATADIR_TAG = "drorch:lab-datadir"
"""Lab only: the data directory of the real cluster behind an Aurora regional cluster, so
that a switchover can make the old writer a standby of the new one, as Aurora does."""

LAB_LOGFILE_TAG = "drorch:lab-logfile"
"""Lab only: that cluster's server log (``pg_ctl -l``)."""

PROMOTE_SECONDS_ENV = "DRORCH_MOTO_PROMOTE_SECONDS"
"""Seconds a ``PromoteReadReplica`` stays in progress (default 0: done by the next read)."""


def promote_seconds() -> float:
    """:data:`PROMOTE_SECONDS_ENV` as seconds (>= 0); ``ValueError`` naming it otherwise."""
    raw = os.environ.get(PROMOTE_SECONDS_ENV, "0")
    try:
        return max(0.0, float(raw))
    except ValueError:
        raise ValueError(f"{PROMOTE_SECONDS_ENV}={raw!r} is not a number of seconds") from None


def install_on_first_rds_use() -> None:
    """Wrap ``moto.backends.get_backend`` (moto's server looks every service's backend
    up through it, at the service's first request) so that asking for ``rds`` installs
    the additions first. Idempotent."""
    from moto import backends

    if getattr(backends.get_backend, "_drorch_wrapped", False):
        return
    original = backends.get_backend

    def get_backend(name: Any) -> Any:
        if name == "rds":
            from drorch.lab import moto_rds

            moto_rds.install()
        return original(name)

    get_backend._drorch_wrapped = True  # type: ignore[attr-defined]
    backends.get_backend = get_backend  # type: ignore[assignment]


ACTION_LOG_PREFIX = "drorch-moto-action"
"""Each AWS action the server answers is logged as ``PREFIX SERVICE REGION ACTION``: the
lab's request log (what was asked, never a body: a body can carry a secret's value)."""


def log_actions() -> None:
    """Wrap moto's dispatch of every action (``BaseResponse.call_action``) to log it to
    stderr (the lab sends it to ``moto.log``). Idempotent.

    Each line goes in one ``write``: the server answers on many threads, and ``print``
    writes the text and its newline as two calls, between which another thread's line
    (an action, werkzeug's request log) landed; the two fused lines then counted as
    neither action (``drorch.lab.lab.moto_actions``)."""
    from moto.core.responses import BaseResponse

    if getattr(BaseResponse.call_action, "_drorch_wrapped", False):
        return
    original = BaseResponse.call_action

    def call_action(self: Any) -> Any:
        try:
            action = self._get_action()
        except Exception:  # noqa: BLE001 (the log line must not fail the request)
            action = "?"
        sys.stderr.write(f"{ACTION_LOG_PREFIX} {self.service_name} "
                         f"{getattr(self, 'region', '?')} {action}\n")
        sys.stderr.flush()
        return original(self)

    call_action._drorch_wrapped = True  # type: ignore[attr-defined]
    BaseResponse.call_action = call_action  # type: ignore[method-assign]


def main(argv: list[str] | None = None) -> None:
    """Run moto's server with the additions: same arguments as ``python -m moto.server``."""
    require_lab_extra()
    from moto import server

    switch_seconds()  # a bad setting fails at start, not on the first failover
    promote_seconds()
    install_on_first_rds_use()
    log_actions()
    server.main(argv if argv is not None else sys.argv[1:])


if __name__ == "__main__":
    main()
