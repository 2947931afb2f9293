"""Decoding the old key a delete logs, byte by byte as PostgreSQL 15 writes it."""

from __future__ import annotations

import struct
import uuid

import pytest

from drorch.reconcile.tupledecode import Attr, UnsupportedKey, decode_logged_tuple

ID8 = Attr(1, "id", "int8", 8, "d")
V = Attr(2, "v", "text", -1, "i")
N = Attr(3, "n", "int4", 4, "i")


def _blob(natts: int, bitmap: bytes | None, data: bytes) -> bytes:
    """xl_heap_header + tuple from t_bits: bitmap, padding to t_hoff, data."""
    hoff = 23 + (len(bitmap) if bitmap else 0)
    hoff = (hoff + 7) & ~7
    infomask = 0x0001 if bitmap else 0
    body = (bitmap or b"").ljust(hoff - 23, b"\0")
    return struct.pack("<HHB", natts, infomask, hoff) + body + data


def test_bigint_key_with_other_columns_null() -> None:
    """Replica identity DEFAULT logs the key in the full descriptor, other columns NULL."""
    blob = _blob(3, bytes([0b001]), (5).to_bytes(8, "little"))
    assert len(blob) - 5 == 9  # as measured: 22-byte main data = 8 + 5 + 9
    assert decode_logged_tuple(blob, [ID8, V, N], {"id"}) == {"id": 5}


def test_composite_key_short_varlena_and_dropped_column() -> None:
    """A dropped column keeps its slot (NULL); a 1-byte varlena header is not aligned."""
    a = Attr(1, "a", "int4", 4, "i")
    gone = Attr(2, "........pg.dropped.2........", "", 4, "i", dropped=True)
    b = Attr(3, "b", "text", -1, "i")
    data = struct.pack("<i", -7) + bytes([(4 << 1) | 1]) + b"abc"
    blob = _blob(3, bytes([0b101]), data)
    assert decode_logged_tuple(blob, [a, gone, b], {"a", "b"}) == {"a": -7, "b": "abc"}


def test_long_varlena_is_aligned_after_padding() -> None:
    """A 4-byte varlena header starts at the column's alignment (zero padding before it)."""
    a = Attr(1, "a", "int2", 2, "s")
    b = Attr(2, "b", "varchar", -1, "i")
    text = "é" * 100
    payload = text.encode()
    data = struct.pack("<h", 3) + b"\0\0" + struct.pack("<I", (len(payload) + 4) << 2) + payload
    assert decode_logged_tuple(_blob(2, None, data), [a, b], {"a", "b"}) == {"a": 3, "b": text}


def test_uuid_date_and_timestamptz_keys() -> None:
    """Fixed-size types decode to text PostgreSQL's input functions accept."""
    u = uuid.uuid4()
    attrs = [Attr(1, "u", "uuid", 16, "c"), Attr(2, "d", "date", 4, "i"),
             Attr(3, "t", "timestamptz", 8, "d")]
    data = u.bytes + struct.pack("<i", 1) + b"\0\0\0\0" + struct.pack("<q", 1_500_000)
    out = decode_logged_tuple(_blob(3, None, data), attrs, {"u", "d", "t"})
    assert out == {"u": str(u), "d": "2000-01-02", "t": "2000-01-01T00:00:01.500000+00:00"}


@pytest.mark.parametrize("raw", [bytes([0x01, 18]) + bytes(16),  # TOAST pointer
                                 struct.pack("<I", (20 << 2) | 0x02) + bytes(16)])  # compressed
def test_out_of_line_or_compressed_keys_are_refused(raw: bytes) -> None:
    """A key the decoder cannot read exactly raises instead of guessing."""
    with pytest.raises(UnsupportedKey):
        decode_logged_tuple(_blob(1, None, raw), [Attr(1, "k", "text", -1, "i")], {"k"})


def test_unsupported_type_and_missing_key_column_raise() -> None:
    """numeric keys are not decoded; a NULL key column means this is not a key tuple."""
    with pytest.raises(UnsupportedKey):
        decode_logged_tuple(_blob(1, None, bytes([9, 0, 0, 0, 0])),
                            [Attr(1, "k", "numeric", -1, "i")], {"k"})
    with pytest.raises(UnsupportedKey):
        decode_logged_tuple(_blob(3, bytes([0b000]), b""), [ID8, V, N], {"id"})


def test_an_integer_key_stored_first_reads_as_the_general_decoder_reads_it() -> None:
    """The shortcut for the usual key (an integer, the first column) gives what
    decode_logged_tuple gives; any other layout takes the general decoder."""
    from drorch.reconcile.tupledecode import decode_first_int, first_int_format

    for value in (5, -1, 2**63 - 1):
        blob = _blob(3, bytes([0b001]), value.to_bytes(8, "little", signed=True))
        fmt = first_int_format([ID8, V, N], ["id"])
        assert fmt is not None
        assert decode_first_int(blob, fmt) == decode_logged_tuple(blob, [ID8, V, N], {"id"})["id"]
    assert first_int_format([V, N], ["v"]) is None  # not an integer
    assert first_int_format([ID8, V, N], ["n"]) is None  # not first
    assert first_int_format([ID8, V, N], ["id", "n"]) is None  # two columns
    with pytest.raises(UnsupportedKey):  # the key's bit is NULL: never read as a value
        decode_first_int(_blob(3, bytes([0b010]), b"\0" * 8), "<q")
