"""The MySQL read's COPY text encoder and its reading thread (ingest/mysql/snapshot.py `_CopyRows`), without
servers: what the merge side's COPY reads from it, and how the thread ends when the COPY stops early."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from datasurface.errors import SnapshotError
from datasurface.ingest.mysql.snapshot import AHEAD_BYTES, CHUNK, _CopyRows, _transforms


def _read_all(rows: _CopyRows) -> bytes:
    out = b""
    while chunk := rows.read(CHUNK):
        out += chunk
    rows.finish()
    return out


def test_rows_become_copy_text_with_nulls_escapes_and_the_batch_columns() -> None:
    batches = [[("1", "a\tb", None, b"\x00\\"), ("2", "", "x\\y\r\nz", None)], [("3", None, "\x00", b"")]]
    rows = _CopyRows(iter(batches), _transforms(["plain", "text", "text", "bytea"]), [1, 2], extra=(7, 2147483647))
    assert _read_all(rows) == (
        b"1\ta\\tb\t\\N\t\\\\x005c\t7\t2147483647\n"
        b"2\t\t" + b"x\\\\y\\r\\nz\t\\N\t7\t2147483647\n"
        b"3\t\\N\t\x00\t\\\\x\t7\t2147483647\n")  # a NUL is kept: PostgreSQL refuses it, and the job names the row
    assert rows.rows == 3


def test_many_batches_arrive_whole_and_in_order() -> None:
    batches = [[(str(b * 1000 + i), f"v{i}") for i in range(1000)] for b in range(20)]
    rows = _CopyRows(iter(batches), [], [1])
    lines = _read_all(rows).decode().splitlines()
    assert lines == [f"{b * 1000 + i}\tv{i}" for b in range(20) for i in range(1000)]


def test_what_the_read_raises_is_raised_by_the_copy() -> None:
    def batches() -> Iterator[list[tuple[Any, ...]]]:
        yield [("1",)]
        raise SnapshotError("reading source table t: lost connection")

    rows = _CopyRows(batches(), [], [])
    with pytest.raises(SnapshotError, match="lost connection"):
        _read_all(rows)
    rows.finish()
    assert not rows.thread.is_alive()


def test_a_copy_that_stops_early_ends_the_thread_reading_ahead() -> None:
    """The merge side's COPY failed after its first chunk (a value PostgreSQL refuses) while the thread is
    ahead of it, waiting on a full queue: `finish` ends it, and the source is read no further."""
    read = []
    value = "x" * 100_000

    def batches() -> Iterator[list[tuple[Any, ...]]]:
        n = 0
        while True:
            read.append(n)
            yield [(str(n), value)]
            n += 1

    rows = _CopyRows(batches(), [], [1])
    assert rows.read(2) == b"0\t"
    rows.finish(wait=30)  # a bound for a broken thread; a working one stops within a put's 0.1 s
    assert not rows.thread.is_alive()
    assert len(read) <= AHEAD_BYTES // len(value) + 3  # what it had read ahead, not the endless rest


def test_the_thread_is_ahead_by_bytes_whatever_the_rows_width() -> None:
    """However wide a batch's rows, what the thread has made and the COPY not yet read stays within
    AHEAD_BYTES, or is one batch when a batch alone is larger: memory is a few batches at most."""
    seen: list[tuple[int, int]] = []
    holder: list[_CopyRows] = []

    def batches(width: int) -> Iterator[list[tuple[Any, ...]]]:
        for n in range(12):
            if holder:
                seen.append((holder[0].ahead_bytes, len(holder[0].ahead)))
            yield [(str(n), "y" * width)]

    for width in (AHEAD_BYTES // 5, 3 * AHEAD_BYTES):
        seen.clear()
        holder.clear()
        rows = _CopyRows(batches(width), [], [1])
        holder.append(rows)
        lines = 0
        while chunk := rows.read(CHUNK):
            lines += chunk.count(b"\n")
            time.sleep(0.001)  # a COPY slower than the read: the thread runs ahead until it may not
        rows.finish()
        assert lines == 12
        assert seen and all(queued <= AHEAD_BYTES or count == 1 for queued, count in seen), seen
