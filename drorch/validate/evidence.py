"""What a flow leaves behind: results and request/response evidence, secrets removed.

Everything here is JSON-serializable (``to_dict``) because it goes into the
journal and the incident report. Redaction (``drorch.redact``) happens when
the evidence is made, before truncation, so a secret never survives even in
part: values under secret-looking keys (headers such as ``Authorization`` and
``Cookie``, JSON keys such as ``password`` and ``token``, query parameters)
become ``***``, and every secret value the flow has learned (a saved token,
the password sent at login, secret runbook variables) is scrubbed from all
text. Values shorter than ``MIN_SECRET_LEN`` are not scrubbed from free text
(they would mangle everything); they are still hidden under secret keys.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from drorch import redact as _redact

MASK = _redact.MASK
MIN_SECRET_LEN = 4
BODY_LIMIT = 2048

is_secret_key = _redact.is_secret_key


def secret_values_in(obj: Any) -> set[str]:
    """Values held under secret-looking keys anywhere in ``obj`` (to scrub elsewhere)."""
    found: set[str] = set()
    if isinstance(obj, Mapping):
        for key, value in obj.items():
            if is_secret_key(key) and isinstance(value, str | int) and value != "":
                text = str(value)
                found.add(text)
                # "Bearer abc": the credential alone may be echoed elsewhere.
                parts = text.split()
                if len(parts) == 2:
                    found.add(parts[1])
            else:
                found |= secret_values_in(value)
    elif isinstance(obj, list | tuple):
        for value in obj:
            found |= secret_values_in(value)
    return found


def _usable(secrets: Collection[str]) -> list[str]:
    return [s for s in secrets if len(s) >= MIN_SECRET_LEN]


def scrub_text(text: str, secrets: Collection[str]) -> str:
    return _redact.mask_string(text, _usable(secrets))


def redact(obj: Any, secrets: Collection[str] = ()) -> Any:
    """A copy of ``obj`` with secret-looking keys masked and known secret values scrubbed."""
    return _redact.redact(obj, _usable(secrets))


def redact_url(url: str, secrets: Collection[str] = ()) -> str:
    """Mask secret-looking query parameters, any user:password and known secret values."""
    return scrub_text(url, secrets)


def body_evidence(body: Any, secrets: Collection[str], limit: int = BODY_LIMIT) -> Any:
    """Redacted body: the JSON value itself when it is small, else truncated text."""
    if body is None:
        return None
    if isinstance(body, bytes):
        body = body.decode("utf-8", errors="replace")
    if isinstance(body, str):
        try:
            body = json.loads(body)
        except ValueError:
            text = scrub_text(body, secrets)
            return text if len(text) <= limit else f"{text[:limit]}…[truncated {len(text)} chars]"
    cleaned = redact(body, secrets)
    text = json.dumps(cleaned, default=str)
    if len(text) <= limit:
        return cleaned
    return f"{text[:limit]}…[truncated {len(text)} chars]"


@dataclass
class StepEvidence:
    """One HTTP exchange of the last attempt, as sent and as answered (redacted)."""

    name: str
    method: str
    url: str
    connected_to: str | None = None
    request_headers: dict[str, str] = field(default_factory=dict)
    request_body: Any = None
    status: int | None = None
    response_body: Any = None
    ok: bool = False
    error: str | None = None
    duration_s: float = 0.0


@dataclass
class CheckEvidence:
    """One behind-the-API check: how often it was tried and what it last saw."""

    name: str
    kind: str
    ok: bool = False
    attempts: int = 0
    detail: str | None = None
    error: str | None = None


@dataclass
class FlowResult:
    """The outcome of one flow. ``attempts`` counts runs of the HTTP steps."""

    name: str
    ok: bool
    attempts: int
    duration_s: float
    started_at: float
    ended_at: float
    steps: list[StepEvidence] = field(default_factory=list)
    checks: list[CheckEvidence] = field(default_factory=list)
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def headers_evidence(headers: Mapping[str, str], secrets: Collection[str]) -> dict[str, str]:
    """Headers with secret-looking names masked (``Authorization: ***``)."""
    return redact(dict(headers), secrets)  # type: ignore[no-any-return]
