"""Secret redaction for logs, audit entries and reports.

Three rules, applied together by :func:`redact`:

1. **Secret-looking keys.** A mapping key whose normalised name (lower case,
   only letters and digits) contains one of :data:`SECRET_KEY_MARKERS`, or is
   one of :data:`SECRET_KEY_EXACT`, gets the value ``"***"`` whatever it
   holds (``None`` stays ``None``: it reveals nothing). The bare word
   ``secret`` is weaker: it masks only a string/bytes value that is not an
   ARN, and a container under it is searched instead of masked, so
   ``{"secrets": ["app/db"]}`` keeps its names.
   Identifiers are not secrets: a key ending in ``id``/``ids``/``arn``/
   ``arns``/``name``/``names`` (``secret_id``, ``SecretId``, ``secret_arn``,
   ``secret_name``) and the keys in :data:`NOT_SECRET_KEYS` (``fencing_token``
   is a lease counter the audit must show) are left alone.
2. **Known secret values.** Every occurrence of a value handed to the
   :class:`Redactor` (and of its URL-encoded and JSON-escaped forms) inside
   any string is replaced by ``***``.
3. **Credentials inside strings.** ``password=...`` in libpq key/value DSNs
   (and ``PGPASSWORD=...``), ``user:pass@host`` in URLs, secret-looking query
   parameters, ``Authorization:`` values, long ``Bearer`` tokens and
   ``"password": "..."`` inside JSON or repr text are masked.

Everything here is pure: :func:`redact` returns a new structure and never
mutates its input. Limits: a secret that is neither known to the redactor nor
under a secret-looking key nor in one of the recognised string shapes is not
found; bytes come back as (redacted) text.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterable, Mapping, MutableMapping
from typing import Any
from urllib.parse import quote

MASK = "***"

SECRET_KEY_MARKERS: tuple[str, ...] = (
    "password",
    "passwd",
    "passphrase",
    "secretstring",
    "secretbinary",
    "secretkey",
    "secretaccesskey",
    "clientsecret",
    "token",
    "apikey",
    "privatekey",
    "credential",
    "authorization",
    "cookie",
    "signature",
)
"""Substrings of a normalised key that always mean "this value is a secret"."""

SECRET_KEY_EXACT: frozenset[str] = frozenset({"pw", "pwd", "pass", "auth", "sessionkey"})
"""Whole normalised keys that are secrets but too short to search for as substrings."""

WEAK_SECRET_MARKER = "secret"
"""Masks a scalar value unless the key or value is an identifier (see module doc)."""

NOT_SECRET_KEYS: frozenset[str] = frozenset(
    {"fencingtoken", "leasetoken", "nexttoken", "tokencount", "tokenexpiry", "tokenexpiresat"}
)
"""Normalised keys that contain a marker but hold no secret."""

_IDENTIFIER_SUFFIXES: tuple[str, ...] = ("id", "ids", "arn", "arns", "name", "names")

_QUERY_MARKERS = "password|passwd|pwd|token|api_?key|secret|signature|credential"

_KV_DSN_PASSWORD = re.compile(
    r"(?i)(?<![\w?&])(\w*?(?:password|passwd))(\s*=\s*)('(?:[^'\\]|\\.)*'|[^\s']+)"
)
_URL_USERINFO = re.compile(r"(?i)([a-z][a-z0-9+.\-]*://[^:/?#@\s]*:)([^/?#\s]*)(@)")
_QUERY_PARAM = re.compile(rf"(?i)([?&;][\w\-.]*(?:{_QUERY_MARKERS})[\w\-.]*=)([^&#;\s]*)")
_BEARER = re.compile(r"(?i)\b(bearer\s+)([A-Za-z0-9._~+/\-]{16,}=*)")
_AUTH_HEADER = re.compile(
    r"(?i)\b(authorization[\"']?\s*[:=]\s*[\"']?)((?:basic|bearer|digest)\s+)?([^\s\"',]+)"
)
_QUOTED_KEY_VALUE = re.compile(
    r"""(?i)(["'][\w\-]*(?:password|passwd|secret_?string|token|api_?key|private_?key)"""
    r"""[\w\-]*["']\s*:\s*)("(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')"""
)


def normalise_key(key: object) -> str:
    """Lower-case ``key`` and drop everything but letters and digits."""
    return re.sub(r"[^a-z0-9]", "", str(key).lower())


def is_identifier_key(norm: str) -> bool:
    """True when a normalised key names an identifier (``secretid``, ``secretarn``...)."""
    return norm in NOT_SECRET_KEYS or norm.endswith(_IDENTIFIER_SUFFIXES)


def is_secret_key(key: object) -> bool:
    """True when the value under ``key`` must always be masked (rule 1, strong form)."""
    norm = normalise_key(key)
    if is_identifier_key(norm):
        return False
    return norm in SECRET_KEY_EXACT or any(marker in norm for marker in SECRET_KEY_MARKERS)


def _is_weak_secret_key(key: object) -> bool:
    norm = normalise_key(key)
    return WEAK_SECRET_MARKER in norm and not is_identifier_key(norm)


def mask_string(text: str, secret_values: Iterable[str] = ()) -> str:
    """Return ``text`` with known secret values and embedded credentials masked."""
    return _mask(text, _variants(secret_values))


def _mask(text: str, variants: list[str]) -> str:
    for value in variants:
        if value in text:
            text = text.replace(value, MASK)
    text = _QUERY_PARAM.sub(lambda m: f"{m.group(1)}{MASK}", text)
    text = _KV_DSN_PASSWORD.sub(lambda m: f"{m.group(1)}{m.group(2)}{MASK}", text)
    text = _URL_USERINFO.sub(lambda m: f"{m.group(1)}{MASK}{m.group(3)}", text)
    text = _AUTH_HEADER.sub(lambda m: f"{m.group(1)}{m.group(2) or ''}{MASK}", text)
    text = _BEARER.sub(lambda m: f"{m.group(1)}{MASK}", text)
    return _QUOTED_KEY_VALUE.sub(lambda m: f'{m.group(1)}"{MASK}"', text)


def _variants(secret_values: Iterable[str]) -> list[str]:
    """Each value plus the forms it takes inside URLs and JSON, longest first."""
    out: set[str] = set()
    for value in secret_values:
        if not value:
            continue
        out.add(value)
        out.add(quote(value, safe=""))
        out.add(json.dumps(value)[1:-1])
        out.add(json.dumps(value, ensure_ascii=False)[1:-1])
    return sorted(out, key=len, reverse=True)


def redact(obj: Any, secret_values: Iterable[str] = ()) -> Any:
    """Return a redacted deep copy of ``obj`` (rules in the module docstring).

    Dicts, lists, tuples, sets and strings are copied and searched; ``bytes``
    are decoded (UTF-8, invalid bytes escaped) and redacted as text. Numbers,
    booleans and ``None`` pass through. Any other object is returned as is
    unless its ``str()`` holds something to mask, in which case the masked
    string replaces it (an exception message carrying a DSN, for example).
    """
    values = _variants(secret_values)
    return _redact(obj, values)


def _redact(obj: Any, values: list[str]) -> Any:
    if obj is None or isinstance(obj, bool | int | float):
        return obj
    if isinstance(obj, str):
        return _mask(obj, values)
    if isinstance(obj, bytes | bytearray):
        return _mask(bytes(obj).decode("utf-8", "backslashreplace"), values)
    if isinstance(obj, Mapping):
        return {key: _redact_item(key, value, values) for key, value in obj.items()}
    if isinstance(obj, tuple):
        return tuple(_redact(item, values) for item in obj)
    if isinstance(obj, list | set | frozenset):
        return [_redact(item, values) for item in obj]
    text = str(obj)
    masked = _mask(text, values)
    return obj if masked == text else masked


def _redact_item(key: object, value: Any, values: list[str]) -> Any:
    if value is None:
        return None
    if is_secret_key(key):
        return MASK
    if (
        _is_weak_secret_key(key)
        and isinstance(value, str | bytes | bytearray)
        and not _looks_like_arn(value)
    ):
        return MASK
    return _redact(value, values)


def _looks_like_arn(value: str | bytes | bytearray) -> bool:
    prefix = value[:4]
    return prefix in ("arn:", b"arn:")


class Redactor:
    """A growing set of known secret values, usable as a structlog processor.

    Add every secret the process learns (database passwords read from Secrets
    Manager, tokens) with :meth:`add` as soon as it is known; from then on
    :meth:`redact` and every structlog event passing through the instance mask
    it. Put the instance late in a processor chain, after
    ``format_exc_info``/``dict_tracebacks`` and before the renderer, so
    rendered tracebacks are redacted too. Thread-safe; values are never removed
    (a rotated-out password is still a secret in old log lines).
    """

    def __init__(self, values: Iterable[str] = ()) -> None:
        self._lock = threading.Lock()
        self._values: frozenset[str] = frozenset()
        self._variants: list[str] = []
        for value in values:
            self.add(value)

    def add(self, value: str | bytes | None) -> None:
        """Remember ``value`` as a secret. Empty values and ``None`` are ignored."""
        if not value:
            return
        text = value.decode("utf-8", "backslashreplace") if isinstance(value, bytes) else value
        with self._lock:
            if text in self._values:
                return
            self._values = self._values | {text}
            self._variants = _variants(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __contains__(self, value: object) -> bool:
        return value in self._values

    def redact(self, obj: Any) -> Any:
        """Return a redacted deep copy of ``obj`` using every value added so far."""
        return _redact(obj, self._variants)

    def __call__(
        self, logger: Any, method_name: str, event_dict: MutableMapping[str, Any]
    ) -> dict[str, Any]:
        """structlog processor: return the event dict redacted."""
        redacted: dict[str, Any] = _redact(event_dict, self._variants)
        return redacted
