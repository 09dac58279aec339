"""A producer's COPY into the merge side's COPY through an OS pipe (pipe.py), on real sessions: the rows
arrive whole whatever the chunks; with `prepare`, a producer that writes nothing makes no COPY and no table,
and an error of `prepare` itself is raised as it is (a lock timeout stays one the caller retries), with the
producer stopped."""

from __future__ import annotations

import threading
from typing import Any, BinaryIO

import psycopg2
import pytest

from datasurface.pipe import copy_through_pipe


@pytest.fixture
def sessions(dbs: Any) -> Any:
    source, merge = dbs.connect(dbs.source), dbs.connect(dbs.merge)
    yield source, merge
    source.close()
    merge.close()


def producer(source: Any, rows: int) -> Any:
    def produce(out: BinaryIO) -> None:
        with source.cursor() as cur:
            cur.copy_expert(f"COPY (SELECT g, md5(g::text) FROM generate_series(1, {rows}) g) TO STDOUT", out)
    return produce


def make_table(merge: Any) -> None:
    with merge.cursor() as cur:
        cur.execute("CREATE TABLE t (g integer, h text)")


@pytest.mark.parametrize("rows", [1, 200_000])  # a few bytes; several pipe buffers
def test_prepare_runs_before_the_copy_and_every_row_arrives(sessions: Any, rows: int) -> None:
    source, merge = sessions
    copied = copy_through_pipe(source, producer(source, rows), merge, "COPY t (g, h) FROM STDIN", "test",
                               lambda: make_table(merge))
    assert copied == rows
    with merge.cursor() as cur:
        cur.execute("SELECT count(*), sum(g), bool_and(h = md5(g::text)) FROM t")
        assert cur.fetchone() == (rows, rows * (rows + 1) // 2, True)


def test_a_producer_that_writes_nothing_makes_no_copy(sessions: Any) -> None:
    source, merge = sessions
    called = []
    assert copy_through_pipe(source, lambda out: None, merge, "COPY t (g, h) FROM STDIN", "test",
                             lambda: called.append(1)) == 0
    assert called == []
    with merge.cursor() as cur:  # nothing ran on the merge session (a COPY into a missing table would fail)
        cur.execute("SELECT to_regclass('t') IS NULL")
        assert cur.fetchone() == (True,)


def test_an_error_of_prepare_is_raised_as_it_is_and_stops_the_producer(sessions: Any, dbs: Any) -> None:
    source, merge = sessions
    make_table(merge)
    merge.commit()
    holder = dbs.connect(dbs.merge)
    with holder.cursor() as cur:
        cur.execute("LOCK TABLE t IN ACCESS EXCLUSIVE MODE")

    def prepare() -> None:
        with merge.cursor() as cur:
            cur.execute("SET LOCAL lock_timeout = '100ms'; TRUNCATE t")

    before = threading.active_count()
    with pytest.raises(psycopg2.errors.LockNotAvailable):
        copy_through_pipe(source, producer(source, 5_000_000), merge, "COPY t (g, h) FROM STDIN", "test", prepare)
    assert threading.active_count() == before  # the producer's thread ended: its COPY was cancelled
    holder.close()
    merge.rollback()
    source.rollback()
    with source.cursor() as cur:  # the source session is usable again
        cur.execute("SELECT 1")
