"""Decode the old key that a delete or key-changing update logs (``wal_level=logical``).

Under replica identity DEFAULT the server logs the old tuple formed with the
table's full descriptor, every non-key column NULL (``ExtractReplicaIdentity``):
``xl_heap_header`` (t_infomask2, t_infomask, t_hoff: 5 bytes) and the tuple
from ``t_bits`` on (header offset 23), so column data starts at ``t_hoff - 23``.
Columns are walked with the server's alignment rules (short varlena headers are
not aligned). Values come out in a form PostgreSQL's input functions accept;
callers canonicalise them through the server (``jsonb_populate_recordset``)
before comparing them with keys read by SQL.

Supported key types: integers, oid, bool, floats, uuid, text-like, bytea,
date, time, timestamp(tz). Anything else (numeric, external or compressed
values) raises :class:`UnsupportedKey` and the caller falls back to a full
comparison. Little-endian servers only (x86-64, arm64).
"""

from __future__ import annotations

import struct
import uuid
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

HEAP_HASNULL = 0x0001
HEAP_NATTS_MASK = 0x07FF
HEADER_BITS_OFFSET = 23  # offsetof(HeapTupleHeaderData, t_bits)
_ALIGN = {"c": 1, "s": 2, "i": 4, "d": 8}
_PG_EPOCH = datetime(2000, 1, 1)
_PG_EPOCH_DATE = date(2000, 1, 1)
_INT_FORMATS = {"int2": "<h", "int4": "<i", "int8": "<q", "oid": "<I", "float4": "<f",
                "float8": "<d"}
_TEXT_TYPES = {"text", "varchar", "bpchar", "citext"}


class UnsupportedKey(ValueError):
    """A logged key this decoder cannot read exactly; the WAL method cannot be used."""


@dataclass(frozen=True)
class Attr:
    """One column as stored (``pg_attribute``); dropped columns still occupy a slot."""

    attnum: int
    name: str
    typname: str
    attlen: int
    attalign: str
    dropped: bool = False


def _align(off: int, align: str) -> int:
    a = _ALIGN[align]
    return (off + a - 1) & ~(a - 1)


def _varlena(data: bytes, off: int) -> tuple[bytes, int]:
    """(payload, total size) of the varlena at ``off``."""
    first = data[off]
    if first & 0x01:
        if first == 0x01:
            raise UnsupportedKey("key value stored out of line (TOAST pointer)")
        size = (first >> 1) & 0x7F
        return data[off + 1: off + size], size
    header = int.from_bytes(data[off: off + 4], "little")
    if header & 0x03 == 0x02:
        raise UnsupportedKey("key value is compressed inline")
    size = (header >> 2) & 0x3FFFFFFF
    return data[off + 4: off + size], size


def _value(att: Attr, raw: bytes) -> Any:
    t = att.typname
    if t in _INT_FORMATS:
        return struct.unpack(_INT_FORMATS[t], raw)[0]
    if t == "bool":
        return raw[0] != 0
    if t == "uuid":
        return str(uuid.UUID(bytes=bytes(raw)))
    if t in _TEXT_TYPES:
        return bytes(raw).decode("utf-8")
    if t == "name":
        return bytes(raw).split(b"\0", 1)[0].decode("utf-8")
    if t == "bytea":
        return "\\x" + bytes(raw).hex()
    if t == "date":
        days = struct.unpack("<i", raw)[0]
        if days in (-(2**31), 2**31 - 1):
            return "-infinity" if days < 0 else "infinity"
        return (_PG_EPOCH_DATE + timedelta(days=days)).isoformat()
    if t in ("timestamp", "timestamptz"):
        micros = struct.unpack("<q", raw)[0]
        if micros in (-(2**63), 2**63 - 1):
            return "-infinity" if micros < 0 else "infinity"
        moment = _PG_EPOCH + timedelta(microseconds=micros)
        if t == "timestamptz":
            return moment.replace(tzinfo=UTC).isoformat()
        return moment.isoformat()
    if t == "time":
        micros = struct.unpack("<q", raw)[0]
        return (datetime.min + timedelta(microseconds=micros)).time().isoformat()
    raise UnsupportedKey(f"cannot decode a logged key of type {t}")


def decode_logged_tuple(blob: bytes, attrs: list[Attr], want: set[str]) -> dict[str, Any]:
    """Values of the columns named in ``want`` from a logged old tuple.

    ``blob`` is ``xl_heap_header`` followed by the tuple from ``t_bits`` on; ``attrs``
    in ``attnum`` order (the caller sorts once: this runs once per logged delete).
    A wanted column that is NULL in the tuple is an error: a key is never NULL.
    """
    if len(blob) < 5:
        raise UnsupportedKey("logged tuple too short")
    infomask2, infomask, hoff = struct.unpack_from("<HHB", blob, 0)
    body = blob[5:]
    natts = infomask2 & HEAP_NATTS_MASK
    bitmap = body[: (natts + 7) // 8] if infomask & HEAP_HASNULL else None
    data = body[hoff - HEADER_BITS_OFFSET:]
    out: dict[str, Any] = {}
    off = 0
    for i, att in enumerate(attrs[:natts]):
        if bitmap is not None and not bitmap[i >> 3] & (1 << (i & 7)):
            continue
        if att.attlen == -1:
            if data[off] == 0:
                off = _align(off, att.attalign)
            payload, size = _varlena(data, off)
        elif att.attlen == -2:
            end = data.index(b"\0", off)
            payload, size = data[off:end], end - off + 1
        else:
            off = _align(off, att.attalign)
            payload, size = data[off: off + att.attlen], att.attlen
        if att.name in want and not att.dropped:
            out[att.name] = _value(att, payload)
        off += size
    missing = want - set(out)
    if missing:
        raise UnsupportedKey(f"logged tuple lacks key columns {sorted(missing)}")
    return out


def first_int_format(attrs: list[Attr], key: list[str]) -> str | None:
    """The ``struct`` format of a one-column integer key stored first in the tuple
    (``attrs`` in ``attnum`` order), for :func:`decode_first_int`; None otherwise."""
    if len(key) != 1 or not attrs:
        return None
    a = attrs[0]
    if a.attnum != 1 or a.dropped or a.name != key[0] or a.typname not in ("int2", "int4",
                                                                             "int8"):
        return None
    return _INT_FORMATS[a.typname]


def decode_first_int(blob: bytes, fmt: str) -> int:
    """The key :func:`decode_logged_tuple` would read, when it is an integer stored first
    (:func:`first_int_format`): at the start of the data, aligned by construction."""
    if len(blob) < 6:
        raise UnsupportedKey("logged tuple too short")
    _infomask2, infomask, hoff = struct.unpack_from("<HHB", blob, 0)
    if infomask & HEAP_HASNULL and not blob[5] & 1:
        raise UnsupportedKey("logged tuple lacks its key column")
    return int(struct.unpack_from(fmt, blob, 5 + hoff - HEADER_BITS_OFFSET)[0])
