"""Which AWS calls a step made, for its audit entries: service, region, operation,
HTTP status and AWS's request id (what support and CloudTrail are searched by).

Kept apart from :mod:`drorch.adapters.aws` so the engine can collect calls without
importing boto3. Never a parameter or a response body: values can be secrets.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

_calls: ContextVar[list[dict[str, Any]] | None] = ContextVar("drorch_aws_calls", default=None)


@contextmanager
def recording_calls() -> Iterator[list[dict[str, Any]]]:
    """Collect every AWS call this thread makes inside the block: ``[{service, region,
    operation, status, request_id}]`` (or ``error`` when no answer came back). Never a
    parameter or a response body: the audit shows what was asked of AWS, not values."""
    calls: list[dict[str, Any]] = []
    token = _calls.set(calls)
    try:
        yield calls
    finally:
        _calls.reset(token)


def after_call(service: str, region: str, *, model: Any = None, parsed: Any = None,
                http_response: Any = None, exception: Any = None, **_: Any) -> None:
    """botocore's ``after-call`` / ``after-call-error`` events for one client."""
    calls = _calls.get()
    if calls is None:
        return
    entry: dict[str, Any] = {"service": service, "region": region,
                             "operation": getattr(model, "name", "?")}
    if exception is not None:
        entry["error"] = type(exception).__name__
    else:
        meta = (parsed or {}).get("ResponseMetadata", {}) if isinstance(parsed, dict) else {}
        entry["status"] = getattr(http_response, "status_code", None)
        entry["request_id"] = meta.get("RequestId")
        if isinstance(parsed, dict) and parsed.get("Error", {}).get("Code"):
            entry["error"] = parsed["Error"]["Code"]
    calls.append(entry)
