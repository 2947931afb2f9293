"""The lab's SMTP sink: accepts every message and keeps each one as a JSON file.

One file per message in the store directory (``<ns-timestamp>-<uuid>.json``, written to a
temporary name and renamed, so a reader never sees half a file) with the keys ``from``,
``to`` (list), ``subject``, ``message_id``, ``body`` and ``received_at`` (ISO 8601, UTC).
Nothing is relayed anywhere. ``list_messages``/``find_message`` read the store and need
no running server.

Run: ``python -m drorch.lab.smtp_sink --listen 127.0.0.1:PORT --store DIR``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import threading
import time
import uuid
from datetime import UTC, datetime
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import structlog
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

log = structlog.get_logger("drorch.lab.smtp_sink")


def message_record(envelope_from: str, envelope_to: list[str], raw: bytes) -> dict[str, Any]:
    """Turn one received message into the stored JSON record (pure)."""
    msg = message_from_bytes(raw, policy=policy.default)
    body = ""
    if isinstance(msg, EmailMessage):
        part = msg.get_body(preferencelist=("plain", "html"))
        if part is not None:
            body = str(part.get_content())
    return {
        "from": envelope_from,
        "to": list(envelope_to),
        "subject": str(msg.get("Subject", "")),
        "message_id": str(msg.get("Message-ID", "")).strip(),
        "body": body,
        "received_at": datetime.now(UTC).isoformat(),
    }


def write_record(store_dir: Path, record: dict[str, Any]) -> Path:
    """Store one record atomically (temporary file, then rename); returns its path."""
    store_dir.mkdir(parents=True, exist_ok=True)
    name = f"{time.time_ns():020d}-{uuid.uuid4().hex}.json"
    tmp = store_dir / f".{name}.tmp"
    tmp.write_text(json.dumps(record, indent=1))
    final = store_dir / name
    os.replace(tmp, final)
    return final


class StoreHandler:
    """aiosmtpd handler: every DATA becomes one JSON file in ``store_dir``."""

    def __init__(self, store_dir: Path) -> None:
        self.store_dir = store_dir

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        raw = envelope.original_content or envelope.content or b""
        if isinstance(raw, str):
            raw = raw.encode()
        record = message_record(str(envelope.mail_from), list(envelope.rcpt_tos), raw)
        path = write_record(self.store_dir, record)
        log.info("smtp_sink.stored", message_id=record["message_id"], file=path.name)
        return "250 Message accepted for delivery"


def start_sink(host: str, port: int, store_dir: Path) -> Controller:
    """Start the sink in a background thread; returns the running controller (call ``stop()``).

    Raises when the address cannot be bound.
    """
    controller = Controller(StoreHandler(store_dir), hostname=host, port=port)
    controller.start()
    return controller


def list_messages(store_dir: Path) -> list[dict[str, Any]]:
    """All stored messages, oldest first; an absent directory is an empty store."""
    if not store_dir.is_dir():
        return []
    out: list[dict[str, Any]] = []
    for path in sorted(store_dir.glob("*.json")):
        try:
            out.append(json.loads(path.read_text()))
        except (OSError, json.JSONDecodeError):
            continue  # removed or not ours: skip
    return out


def find_message(
    store_dir: Path, *, subject_contains: str | None = None, message_id: str | None = None
) -> dict[str, Any] | None:
    """The newest stored message matching every given criterion, or None.

    ``message_id`` matches with or without the angle brackets.
    """
    wanted_id = message_id.strip("<>") if message_id else None
    for record in reversed(list_messages(store_dir)):
        if subject_contains is not None and subject_contains not in record.get("subject", ""):
            continue
        if wanted_id is not None and record.get("message_id", "").strip("<>") != wanted_id:
            continue
        return record
    return None


def _parse_listen(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    return host or "127.0.0.1", int(port)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="drorch lab SMTP sink")
    parser.add_argument("--listen", required=True, help="HOST:PORT")
    parser.add_argument("--store", required=True, type=Path, help="directory for JSON messages")
    args = parser.parse_args(argv)
    host, port = _parse_listen(args.listen)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    controller = start_sink(host, port, args.store)
    log.info("smtp_sink.listening", host=host, port=port, store=str(args.store))
    try:
        stop.wait()
    finally:
        controller.stop()


if __name__ == "__main__":
    main()
