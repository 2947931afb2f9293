"""Locating a record's bytes in WAL segment files and decoding its payload (PostgreSQL 15)."""

from __future__ import annotations

import pytest

from drorch.reconcile import walbytes as wb
from drorch.reconcile.walparse import WalFormatError

SEG = 16 * 1024 * 1024


def test_wal_file_names_round_trip() -> None:
    """Segment numbers and timelines map to file names and back; other names are ignored."""
    name = wb.wal_file_name(2, 0x103, SEG)  # LSN 1/3000000 with 16 MB segments
    assert name == "000000020000000100000003"
    assert wb.parse_wal_file_name(name, SEG) == (2, 0x103)
    assert wb.parse_wal_file_name("00000002.history", SEG) is None


def test_record_tail_within_one_page() -> None:
    """The last bytes of a short record are one contiguous span."""
    assert wb.record_tail_spans(0x3000100, 68, 22, SEG) == [(3, 0x100 + 46, 22)]


def test_record_tail_skips_the_page_header_it_crosses() -> None:
    """A record crossing an 8 KB boundary continues after the 24-byte page header."""
    lsn = 0x3000000 + 8192 - 30  # 30 bytes left on the first page
    spans = wb.record_tail_spans(lsn, 100, 80, SEG)
    # 70 bytes land on the next page after its header; the tail is 10 bytes + 70 bytes
    assert spans == [(3, 8192 - 10, 10), (3, 8192 + 24, 70)]


def test_record_tail_crossing_a_segment_uses_the_long_header() -> None:
    """At a segment start the page header is 40 bytes and the bytes are in the next file."""
    lsn = 0x4000000 - 16
    assert wb.record_tail_spans(lsn, 50, 50, SEG) == [(3, SEG - 16, 16), (4, 40, 34)]


def test_lookback_starts_are_segment_aligned_and_bounded() -> None:
    """After one short in-segment try, starts fall on segment boundaries down to the oldest."""
    split = 0x3384728
    starts = wb.lookback_starts(split, SEG, 0x1000000)
    assert starts == [split - (1 << 20), 0x3000000, 0x2000000, 0x1000000]
    assert wb.lookback_starts(0x3084728, SEG, 0)[:2] == [0x3000000, 0x2000000]
    assert wb.lookback_starts(0x3000100, SEG, 0x3000000) == [0x3000000]
    # a split right after an XLOG SWITCH sits on a segment boundary: start one segment back
    assert wb.lookback_starts(0x3000000, SEG, 0)[0] == 0x2000000


def test_old_key_is_present_only_when_flagged() -> None:
    """Deletes and updates carry an old key only with the CONTAINS_OLD_KEY/TUPLE flags."""
    delete = bytes([0] * 7 + [0x04]) + b"KEY"
    assert wb.old_tuple_of("delete", delete) == b"KEY"
    assert wb.old_tuple_of("delete", bytes(8)) is None
    update = bytes([0] * 7 + [0x08] + [0] * 6) + b"OLD"
    assert wb.old_tuple_of("update", update) == b"OLD"
    assert wb.old_tuple_of("update", bytes([0] * 7 + [0x10] + [0] * 6)) is None


def test_bulk_insert_offsets_logged_or_implied() -> None:
    """Offsets are logged after flags and count; a fresh page (INIT) implies 1..n."""
    main = bytes([8, 0]) + (3).to_bytes(2, "little") + b"".join(
        o.to_bytes(2, "little") for o in (4, 5, 9))
    assert wb.multi_insert_offsets(main, 3, False) == [4, 5, 9]
    assert wb.multi_insert_offsets(b"\x08\x00\x02\x00", 2, True) == [1, 2]
    with pytest.raises(WalFormatError):
        wb.multi_insert_offsets(main, 4, False)
