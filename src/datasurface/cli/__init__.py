"""`datasurface-job`: the command line (docs/cli.md).

Errors are one line on stderr (a traceback only with --debug); the last stdout line is always
`DATASURFACE_RESULT_CODE=<status>` so a caller can read the result without parsing logs.

This module is what the console script imports, so it imports nothing heavy: a plain `merge` runs
through cli/fast.py; every other command, and `--help`, through the typer application in cli/app.py.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import sys


def main(argv: list[str] | None = None) -> int:
    """Entry point: runs a command and maps every outcome to an exit status."""
    from datasurface import interrupts
    from datasurface.cli.fast import parse_merge

    args = sys.argv[1:] if argv is None else argv
    interrupts.watch()  # a Ctrl-C that a driver swallows is still an interruption (interrupts.py)

    plain = parse_merge(args)
    if plain is None:
        from datasurface.cli.app import main as typer_main

        return typer_main(args)
    from datasurface.cli.fast import run_merge_command
    from datasurface.cli.outcome import failed, result_line

    return result_line(run_merge_command(*plain, failed))


def _exit() -> None:  # pragma: no cover - console script
    code = main()
    # Exit as sys.exit does (atexit handlers: logging's flush, finalizers; the streams flushed) but without
    # the interpreter's teardown: a daemon thread still inside a database driver's call (the heartbeat, a
    # session opened ahead, when a connection was lost) can crash that teardown, and the job would end with
    # SIGSEGV instead of its exit status.
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)
