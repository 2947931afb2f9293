"""Test hook: kill this process at a named point, the way ``kill -9`` would.

Its own module so that steps and adapters can mark points inside their work
(e.g. ``freeze:main:roles_locked``, between ``ALTER ROLE … NOLOGIN`` and the
rest of the freeze) without importing the engine: steps sit below the engine.
"""

from __future__ import annotations

import os
import signal


def fault_point(point: str) -> None:
    """``DRORCH_FAULT_KILL_AT=promote:main:after_apply`` kills this process there with
    SIGKILL: nothing after it runs, no ``finally``, no flush. Unset in production."""
    if os.environ.get("DRORCH_FAULT_KILL_AT") == point:
        os.kill(os.getpid(), signal.SIGKILL)
