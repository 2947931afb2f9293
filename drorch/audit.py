"""The hash-chained audit log: who did what, why, with which inputs, and how it ended.

One JSON object per line, one line per decision or action. Each entry holds
``seq`` (1..n), ``ts`` (UTC, ISO 8601, microseconds), ``incident``, ``actor``
(``"auto"`` or a named human), ``action`` (stable dotted name such as
``step.promote.applied``), ``reason``, ``inputs``, ``outcome`` (``ok``,
``failed``, ``refused``, ``skipped``...), ``detail``, ``prev`` and ``hash``.

Chain: ``hash`` is the SHA-256 of the entry's canonical form without ``hash``
(:func:`canonical`: sorted keys, no spaces, ``default=str``); ``prev`` is the
``hash`` of the entry before (:data:`GENESIS` for the first). Because ``hash``
covers ``seq`` and ``prev``, chaining to it is as strong as hashing the whole
previous line, and the last ``hash`` is the log's *head*. Each line is written
in exactly the canonical form.

What :func:`verify` catches: an edited entry (its hash), a removed, inserted,
duplicated or reordered entry (``seq`` and ``prev``), a line that is not a
sealed entry, a torn last line. What the chain alone cannot catch: entries cut
off the *end*, or the whole file replaced by a freshly computed chain. Store
the head somewhere else (the journal) and pass it as ``expected_head``.

Secrets: ``inputs``, ``detail``, ``reason`` (every field) go through a
:class:`~drorch.redact.Redactor` before they are hashed and written, so no
secret value it knows, no secret-looking key and no DSN password reaches disk.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

import structlog

from drorch.redact import Redactor

GENESIS = "0" * 64
"""``prev`` of the first entry."""

FIELDS: frozenset[str] = frozenset(
    {"seq", "ts", "incident", "actor", "action", "reason", "inputs", "outcome", "detail"}
    | {"prev", "hash"}
)
TORN_TAIL_ACTION = "audit.torn_tail.set_aside"

_ACTION = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z0-9_]+)+$")
_OUTCOME = re.compile(r"^[a-z][a-z0-9_]*$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_log = structlog.get_logger(__name__)


class AuditError(Exception):
    """The log cannot be appended to safely (its last entry is not a sealed entry)."""


def canonical(entry: Mapping[str, Any]) -> str:
    """The one serialisation that is hashed and written."""
    return json.dumps(entry, sort_keys=True, separators=(",", ":"), default=str)


def entry_hash(entry: Mapping[str, Any]) -> str:
    """SHA-256 (hex) of ``entry``'s canonical form without its ``hash`` field."""
    body = {key: value for key, value in entry.items() if key != "hash"}
    return hashlib.sha256(canonical(body).encode("utf-8")).hexdigest()


def seal(body: Mapping[str, Any], *, seq: int, prev: str) -> dict[str, Any]:
    """Return ``body`` numbered ``seq``, chained to ``prev`` and hashed. Pure."""
    entry = {**body, "seq": seq, "prev": prev}
    entry["hash"] = entry_hash(entry)
    return entry


def check_entry(entry: Any, *, seq: int | None, prev: str | None) -> str | None:
    """Why ``entry`` is not the sealed entry expected at this place, or ``None``.

    ``seq``/``prev`` are what the chain expects here; ``None`` skips that check
    (used for the last line when the lines before it are not read).
    """
    if not isinstance(entry, dict):
        return "is not a JSON object"
    if set(entry) != FIELDS:
        missing = sorted(FIELDS - set(entry))
        extra = sorted(set(entry) - FIELDS)
        return f"is not an audit entry (missing {missing}, unexpected {extra})"
    if entry["hash"] != entry_hash(entry):
        return "was altered: its hash does not match its content"
    got_seq = entry["seq"]
    if not isinstance(got_seq, int) or isinstance(got_seq, bool):
        return f"has a non-integer seq {got_seq!r}"
    if seq is not None and got_seq != seq:
        return f"has seq {got_seq}, expected {seq} (an entry was removed, inserted or reordered)"
    if prev is not None and entry["prev"] != prev:
        return "does not chain to the entry before it (an entry was removed, inserted or reordered)"
    return None


class AuditLog:
    """Append-only writer of one audit log file; safe across processes.

    Every :meth:`record` opens the file, takes an exclusive ``flock``, reads
    the last line to continue ``seq`` and the chain, writes one line through a
    dedicated structlog logger (its own processor chain; the global structlog
    configuration is untouched), ``fsync``\\ s and closes. A returned entry is
    on disk: a ``kill -9`` right after loses nothing. Not idempotent: each call
    appends a new entry.

    Torn last line (no trailing newline: a crash or full disk mid-write, so
    that :meth:`record` never returned): the next :meth:`record` copies the
    fragment byte for byte to ``<file>.torn-<offset>-<sha12>`` (fsync'd),
    truncates it from the log and appends an ``audit.torn_tail.set_aside``
    entry naming the offset, size, SHA-256 and copy, then the caller's entry.
    Until then :func:`verify` reports the torn line. A *complete* last line that
    is not a sealed entry is never chained onto: :meth:`record` raises
    :class:`AuditError` and a human must look.
    """

    def __init__(
        self,
        path: Path,
        redactor: Redactor | None = None,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self.path = Path(path)
        self.redactor = redactor if redactor is not None else Redactor()
        self._clock = clock or (lambda: datetime.now(UTC))
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def record(
        self,
        action: str,
        *,
        actor: str,
        incident: str | None = None,
        reason: str | None = None,
        inputs: Mapping[str, Any] | None = None,
        outcome: str = "ok",
        detail: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Append one entry and return it exactly as written (redacted, sealed).

        Raises ``ValueError`` for a malformed action/actor/outcome and
        :class:`AuditError` when the last line is not a sealed entry.
        """
        if not _ACTION.match(action):
            raise ValueError(f"action must be a dotted lower-case name, got {action!r}")
        if not isinstance(actor, str) or not actor.strip():
            raise ValueError("actor must be 'auto' or a named human")
        if not _OUTCOME.match(outcome):
            raise ValueError(f"outcome must be a lower-case word, got {outcome!r}")
        body = {
            "incident": incident,
            "actor": actor,
            "action": action,
            "reason": reason,
            "inputs": dict(inputs or {}),
            "outcome": outcome,
            "detail": dict(detail) if detail is not None else None,
        }
        with _locked(self.path) as f:
            seq, prev = self._continue_chain(f)
            return self._append(f, body, seq=seq, prev=prev)

    def head(self) -> str | None:
        """Hash of the last complete entry (to store in the journal), ``None`` if empty."""
        if not self.path.exists():
            return None
        with open(self.path, "rb") as f:
            fcntl.flock(f.fileno(), fcntl.LOCK_SH)
            end = f.seek(0, os.SEEK_END)
            start, line = _last_line(f, end)
            if line and not line.endswith(b"\n"):
                start, line = _last_line(f, start)
            entry = _parse(line)
            return entry.get("hash") if isinstance(entry, dict) else None

    def _continue_chain(self, f: BinaryIO) -> tuple[int, str]:
        """Return (next seq, prev) under the lock, setting a torn tail aside first."""
        end = f.seek(0, os.SEEK_END)
        start, line = _last_line(f, end)
        if line and not line.endswith(b"\n"):
            seq, prev = self._chain_after(*_last_line(f, start))
            torn = self._set_aside(f, start, line, seq=seq, prev=prev)
            return torn["seq"] + 1, torn["hash"]
        return self._chain_after(start, line)

    def _chain_after(self, start: int, line: bytes) -> tuple[int, str]:
        """(seq, prev) for the entry that follows ``line`` (found at byte ``start``)."""
        if not line:
            return 1, GENESIS
        entry = _parse(line)
        problem = check_entry(entry, seq=None, prev=None)
        if problem is not None:
            raise AuditError(
                f"{self.path}: last line (byte {start}) {problem}; refusing to chain onto it"
            )
        return entry["seq"] + 1, entry["hash"]

    def _set_aside(
        self, f: BinaryIO, start: int, fragment: bytes, *, seq: int, prev: str
    ) -> dict[str, Any]:
        digest = hashlib.sha256(fragment).hexdigest()
        copy = self.path.with_name(f"{self.path.name}.torn-{start}-{digest[:12]}")
        with open(copy, "wb") as out:
            out.write(fragment)
            out.flush()
            os.fsync(out.fileno())
        _fsync_dir(copy.parent)
        f.truncate(start)
        f.flush()
        os.fsync(f.fileno())
        detail = {"offset": start, "bytes": len(fragment), "sha256": digest, "saved_to": str(copy)}
        _log.warning("audit.torn_tail", path=str(self.path), **detail)
        body = {
            "incident": None,
            "actor": "auto",
            "action": TORN_TAIL_ACTION,
            "reason": "the last line had no newline (interrupted write); it was set aside",
            "inputs": {"path": str(self.path)},
            "outcome": "ok",
            "detail": detail,
        }
        return self._append(f, body, seq=seq, prev=prev)

    def _append(self, f: BinaryIO, body: dict[str, Any], *, seq: int, prev: str) -> dict[str, Any]:
        clean = self.redactor.redact(_jsonable(body))
        clean["ts"] = self._clock().astimezone(UTC).isoformat(timespec="microseconds")
        entry = seal(clean, seq=seq, prev=prev)
        _writer(f).msg(**entry)
        os.fsync(f.fileno())
        return entry


@contextmanager
def _locked(path: Path) -> Iterator[BinaryIO]:
    """The log opened for append under an exclusive ``flock`` (released on close)."""
    created = not path.exists()
    with open(path, "a+b") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        if created:
            _fsync_dir(path.parent)
        yield f


def _writer(f: BinaryIO) -> Any:
    """A structlog logger that writes one canonical JSON line per call to ``f``."""
    return structlog.wrap_logger(
        structlog.BytesLogger(f),
        processors=[structlog.processors.JSONRenderer(serializer=_canonical_bytes)],
        wrapper_class=structlog.BoundLogger,
        context_class=dict,
    )


def _canonical_bytes(obj: Mapping[str, Any], **_: Any) -> bytes:
    return canonical(obj).encode("utf-8")


def _jsonable(obj: Any) -> Any:
    """What ``obj`` becomes after a JSON round trip (so the hash covers what is read back)."""
    return json.loads(json.dumps(obj, default=str))


def _parse(line: bytes) -> Any:
    try:
        return json.loads(line)
    except ValueError:
        return None


def _last_line(f: BinaryIO, end: int) -> tuple[int, bytes]:
    """Return (offset, bytes) of the last line in ``f[:end]`` (with its newline if any)."""
    if end == 0:
        return 0, b""
    pos, start = end - 1, 0  # the byte at end-1 may be the line's own newline
    while pos > 0:
        step = min(8192, pos)
        pos -= step
        f.seek(pos)
        i = f.read(step).rfind(b"\n")
        if i >= 0:
            start = pos + i + 1
            break
    f.seek(start)
    return start, f.read(end - start)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass(frozen=True)
class VerifyResult:
    """Outcome of :func:`verify`. ``entries`` counts the entries that verified."""

    ok: bool
    entries: int
    first_bad_line: int | None = None
    problem: str | None = None
    head: str | None = None

    def message(self) -> str:
        """One sentence for a human (and the CLI)."""
        if self.ok:
            head = f", head {self.head}" if self.head else ""
            return f"audit log intact: {self.entries} entries{head}"
        if self.first_bad_line is None:
            return f"audit log not verified: {self.problem}"
        return f"audit log broken at line {self.first_bad_line}: {self.problem}"


def verify(path: Path, expected_head: str | None = None) -> VerifyResult:
    """Check the whole chain of the log at ``path``; read-only.

    ``expected_head``: the hash of an entry the log must contain, recorded
    elsewhere (e.g. the journal's copy of :meth:`AuditLog.head`). Entries after
    it are fine; its absence means the log was cut short (or replaced), which
    the chain alone cannot see.
    """
    path = Path(path)
    if expected_head is not None and not _HEX64.match(expected_head):
        return VerifyResult(False, 0, None, f"expected head {expected_head!r} is not a sha256")
    if not path.exists():
        return VerifyResult(False, 0, None, f"{path} does not exist")
    prev, count, seen_head = GENESIS, 0, expected_head is None
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            problem = _line_problem(raw, seq=count + 1, prev=prev)
            if problem is not None:
                return VerifyResult(False, count, lineno, f"line {lineno} {problem}")
            prev = json.loads(raw)["hash"]
            count += 1
            seen_head = seen_head or prev == expected_head
    head = prev if count else None
    if not seen_head:
        problem = (
            f"the log ends after {count} entries without reaching the expected head "
            f"{expected_head}: entries were removed from the end or the log was replaced"
        )
        return VerifyResult(False, count, count + 1, problem, head)
    return VerifyResult(True, count, None, None, head)


def _line_problem(raw: bytes, *, seq: int, prev: str) -> str | None:
    if not raw.endswith(b"\n"):
        return "is incomplete: no newline at the end (torn write)"
    if not raw.strip():
        return "is empty"
    entry = _parse(raw)
    if entry is None:
        return "is not valid JSON"
    return check_entry(entry, seq=seq, prev=prev)


def iter_entries(path: Path) -> Iterator[dict[str, Any]]:
    """Yield the entries of every complete line, in file order; no chain checks.

    A torn (unterminated) last line is skipped; any other line that is not a
    JSON object raises :class:`AuditError` naming it.
    """
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            if not raw.endswith(b"\n"):
                return
            entry = _parse(raw)
            if not isinstance(entry, dict):
                raise AuditError(f"{path}: line {lineno} is not a JSON object")
            yield entry


def export(path: Path) -> list[dict[str, Any]]:
    """All entries, for reports. Call :func:`verify` to state whether they are intact."""
    return list(iter_entries(path))
