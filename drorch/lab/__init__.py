"""The local two-region lab. Its servers need the ``lab`` extra
(``pip install 'drorch[lab]'``: moto, dnslib, aiosmtpd); nothing outside this package
imports them, so a production install runs every other command without them."""

from __future__ import annotations

import importlib.util

LAB_PACKAGES = ("moto", "dnslib", "aiosmtpd")


def require_lab_extra() -> None:
    """Raise ``RuntimeError`` naming what is missing. The lab's servers run as processes
    of their own: without this a missing package shows only as a server that exited,
    explained in its log."""
    missing = [name for name in LAB_PACKAGES if not _importable(name)]
    if missing:
        raise RuntimeError(f"the lab needs drorch's lab extra (missing {', '.join(missing)}): "
                           "pip install 'drorch[lab]'")


def _importable(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):  # ValueError: in sys.modules without a spec
        return False
