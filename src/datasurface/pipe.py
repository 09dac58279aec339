"""A producer thread's bytes into the merge side's COPY through an OS pipe: memory stays flat whatever the
size of what is copied. Used by the snapshot (the source's COPY) and by change capture (decoded changes)."""

from __future__ import annotations

import io
import os
import threading
from collections.abc import Callable
from typing import Any, BinaryIO

import psycopg2

from datasurface import interrupts
from datasurface.db import PgConnection

PIPE_CHUNK = 1 << 16


class PipeError(Exception):
    """One side of a piped COPY failed: `side` is "source" (the producer) or "merge" (the COPY)."""

    def __init__(self, side: str, cause: BaseException):
        super().__init__(side, cause)
        self.side = side
        self.cause = cause


def copy_through_pipe(source: PgConnection, produce: Callable[[BinaryIO], None], merge: PgConnection,
                      in_sql: str, name: str, prepare: Callable[[], None] | None = None) -> int:
    """Run `produce(writer)` (reading from `source`) in a thread while `in_sql` (a COPY … FROM STDIN on
    `merge`) reads what it writes; the rows copied. With `prepare`, the COPY waits for the producer's first
    bytes and runs `prepare()` (which makes its table) first: a producer that writes nothing runs neither.
    A failure raises PipeError naming the side that caused it: the producer's error caused by the COPY
    failing first (a cancel, a closed pipe) is not the cause."""
    read_fd, write_fd = os.pipe()
    producer_error: list[BaseException] = []

    def run() -> None:
        try:
            with os.fdopen(write_fd, "wb", buffering=PIPE_CHUNK) as writer:
                produce(writer)
        except BaseException as exc:  # reported by the consuming thread
            producer_error.append(exc)

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    consumer_error: psycopg2.Error | None = None
    interrupted_before = interrupts.count()
    rows = 0
    prepare_error: BaseException | None = None
    try:
        first = b""
        if prepare is not None:
            first = os.read(read_fd, PIPE_CHUNK)  # as soon as there are any (none: the producer ended)
            if first:
                try:
                    prepare()
                except BaseException as exc:  # its own error, as it is (a lock timeout is retried by the caller)
                    prepare_error = exc
                    source.cancel()
        if prepare_error is None and (prepare is None or first):
            with merge.cursor() as cur:
                cur.copy_expert(in_sql, io.BufferedReader(_PipeReader(first, read_fd), PIPE_CHUNK), size=PIPE_CHUNK)
                rows = cur.rowcount
    except psycopg2.Error as exc:
        consumer_error = exc
        source.cancel()  # stop the source from sending more
    finally:
        os.close(read_fd)  # unblocks a producer waiting on a full pipe
        thread.join()
    if prepare_error is not None:
        raise prepare_error
    if consumer_error is not None:
        interrupts.raise_if_interrupted(interrupted_before)  # Ctrl-C inside a read of the pipe
    if producer_error and not (
        consumer_error is not None
        and isinstance(producer_error[0], psycopg2.extensions.QueryCanceledError | OSError)
    ):
        raise PipeError("source", producer_error[0])
    if consumer_error is not None:
        raise PipeError("merge", consumer_error)
    return rows


class _PipeReader(io.RawIOBase):
    """The bytes read ahead (if any), then the rest of the pipe (`fd`, which its opener closes)."""

    def __init__(self, first: bytes, fd: int):
        self.first = first
        self.fd = fd

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self.first[:len(buffer)] if self.first else os.read(self.fd, len(buffer))
        self.first = self.first[len(data):]
        buffer[:len(data)] = data
        return len(data)
