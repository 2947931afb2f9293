"""Pure: where a WAL record's bytes lie in the segment files, and what its payload says.

WAL pages carry a 24-byte header (40 at a segment start) that a record's bytes
skip, so the last bytes of a record (its main data: the old key of a delete,
the offsets of a bulk insert) are located by walking pages from its LSN.
Segment files are named ``TTTTTTTTXXXXXXXXYYYYYYYY`` (timeline, segment number
split in two). Layouts are PostgreSQL 15's ``heapam_xlog.h``.
"""

from __future__ import annotations

from drorch.reconcile.walparse import (
    DELETE_CONTAINS_OLD_KEY,
    DELETE_CONTAINS_OLD_TUPLE,
    SIZE_OF_HEAP_DELETE,
    SIZE_OF_HEAP_UPDATE,
    UPDATE_CONTAINS_OLD_KEY,
    UPDATE_CONTAINS_OLD_TUPLE,
    WalFormatError,
)

XLOG_PAGE_SHORT_HEADER = 24
XLOG_PAGE_LONG_HEADER = 40


def lookback_starts(split: int, seg_size: int, oldest: int, first: int = 1 << 20
                    ) -> list[int]:
    """Where to start reading when looking back from ``split``, nearest first.

    A start inside a segment may land after an XLOG SWITCH (zeros until the
    segment ends: no record can be found), so every start but a first short
    one in the split's own segment is a segment boundary; the reach grows 4x.
    """
    own = split - split % seg_size
    # a split right after an XLOG SWITCH sits on a boundary: the previous segment ends in zeros
    out = [split - first] if split > own and split - first > own else []
    seg_start = own if split > own else own - seg_size
    k = 0
    while True:
        lo = max(oldest, seg_start - k * seg_size)
        out.append(lo)
        if lo <= oldest:
            return out
        k = 1 if k == 0 else k * 4


def wal_file_name(timeline: int, segno: int, seg_size: int) -> str:
    per_id = 0x100000000 // seg_size
    return f"{timeline:08X}{segno // per_id:08X}{segno % per_id:08X}"


def parse_wal_file_name(name: str, seg_size: int) -> tuple[int, int] | None:
    """``(timeline, segno)`` of a WAL segment file name; None for anything else."""
    if len(name) != 24 or not all(c in "0123456789ABCDEF" for c in name):
        return None
    per_id = 0x100000000 // seg_size
    return int(name[:8], 16), int(name[8:16], 16) * per_id + int(name[16:], 16)


PAGE_SIZE = 8192
"""``XLOG_BLCKSZ``: the WAL page size of a default build."""


def record_tail_spans(lsn: int, total_len: int, tail_len: int, seg_size: int,
                      page_size: int = PAGE_SIZE) -> list[tuple[int, int, int]]:
    """Where the last ``tail_len`` bytes of a record lie: ``[(segno, offset, length)]``.

    A record's bytes are contiguous except where they cross a page: each page
    starts with a header (long at a segment start) that the record skips.
    """
    if tail_len > total_len:
        raise WalFormatError("tail longer than the record")
    spans: list[tuple[int, int, int]] = []
    pos, remaining, skip = lsn, total_len, total_len - tail_len
    while remaining > 0:
        in_page = pos % page_size
        if in_page == 0:
            pos += XLOG_PAGE_LONG_HEADER if pos % seg_size == 0 else XLOG_PAGE_SHORT_HEADER
            in_page = pos % page_size
        n = min(remaining, page_size - in_page)
        take_from = min(skip, n)
        if n - take_from > 0:
            start = pos + take_from
            spans.append((start // seg_size, start % seg_size, n - take_from))
        skip -= take_from
        pos += n
        remaining -= n
    return _merge(spans)


def _merge(spans: list[tuple[int, int, int]]) -> list[tuple[int, int, int]]:
    out: list[tuple[int, int, int]] = []
    for seg, off, n in spans:
        if out and out[-1][0] == seg and out[-1][1] + out[-1][2] == off:
            out[-1] = (seg, out[-1][1], out[-1][2] + n)
        else:
            out.append((seg, off, n))
    return out


def old_tuple_of(op: str, main: bytes) -> bytes | None:
    """The logged old key (or whole old tuple) of a delete or update, header included.

    Returns ``xl_heap_header`` (5 bytes) + tuple bytes from ``t_bits`` on, or
    None when the record carries no old key (not ``wal_level=logical``, no
    replica identity, or an update that kept its key)."""
    if op == "delete":
        if len(main) < SIZE_OF_HEAP_DELETE:
            raise WalFormatError("delete main data too short")
        flags = main[7]
        if flags & (DELETE_CONTAINS_OLD_KEY | DELETE_CONTAINS_OLD_TUPLE):
            return main[SIZE_OF_HEAP_DELETE:]
        return None
    if op == "update":
        if len(main) < SIZE_OF_HEAP_UPDATE:
            raise WalFormatError("update main data too short")
        flags = main[7]
        if flags & (UPDATE_CONTAINS_OLD_KEY | UPDATE_CONTAINS_OLD_TUPLE):
            return main[SIZE_OF_HEAP_UPDATE:]
        return None
    raise WalFormatError(f"no old tuple in a {op} record")


def multi_insert_offsets(main: bytes, ntuples: int, init_page: bool) -> list[int]:
    """Line pointers a bulk insert (COPY) filled: logged, or 1..n on a fresh page."""
    if init_page:
        return list(range(1, ntuples + 1))
    if len(main) < 4 + 2 * ntuples:
        raise WalFormatError("MULTI_INSERT main data too short for its offsets")
    logged = int.from_bytes(main[2:4], "little")
    if logged != ntuples:
        raise WalFormatError(f"MULTI_INSERT says {ntuples} tuples, main data {logged}")
    return [int.from_bytes(main[4 + 2 * i: 6 + 2 * i], "little") for i in range(ntuples)]
