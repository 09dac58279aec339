"""Ctrl-C seen, also where a driver swallowed the KeyboardInterrupt it raised.

psycopg2 calls a COPY's reads from C and turns whatever a read raises into the server's "COPY from stdin
failed: error in .read() call", dropping the exception itself; and a Ctrl-C lands in one of those reads
more often than not, since that is where a COPY waits. The job's SIGINT handler (`watch`) counts each
Ctrl-C, then raises KeyboardInterrupt as Python's own handler does, so the code around a failed COPY can
tell an interrupted run (exit 130) from a bad snapshot (`raise_if_interrupted`).
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

_seen = [0]  # Ctrl-Cs so far in this process (a signal is process-wide state)


def watch() -> None:
    """Count Ctrl-Cs from now on, where SIGINT has Python's default handler (not when it is ignored)."""
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, _on_sigint)


def _on_sigint(signum: int, frame: FrameType | None) -> None:
    _seen[0] += 1
    signal.default_int_handler(signum, frame)


def count() -> int:
    return _seen[0]


def raise_if_interrupted(since: int) -> None:
    """After a failed statement: raise KeyboardInterrupt when a Ctrl-C came since `count()` was `since`."""
    if _seen[0] != since:
        raise KeyboardInterrupt


@contextmanager
def sigterm_interrupts() -> Iterator[None]:
    """SIGTERM (a pod deleted, a task stopped) interrupts like Ctrl-C while the body runs, where SIGTERM has
    its default action: a run of many stores stops where it is, records its stream in flight as interrupted
    and prints its result line, instead of vanishing without a word. In the main thread only."""
    if threading.current_thread() is not threading.main_thread() \
            or signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        yield
        return
    signal.signal(signal.SIGTERM, _on_sigint)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
