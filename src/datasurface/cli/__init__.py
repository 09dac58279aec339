"""`datasurface-job`: the command line (docs/cli.md).

Errors are one line on stderr (a traceback only with --debug); the last stdout line is always
`DATASURFACE_RESULT_CODE=<status>` so a caller can read the result without parsing logs.

This module is what the console script imports, so it imports nothing heavy: a plain `merge` runs
through cli/fast.py; every other command, and `--help`, through the typer application in cli/app.py.
"""

from __future__ import annotations

import gc
import os
import sys


def main(argv: list[str] | None = None) -> int:
    """Entry point: runs a command and maps every outcome to an exit status."""
    return _run(sys.argv[1:] if argv is None else argv)[0]


def _run(args: list[str]) -> tuple[int, bool]:
    """The exit status, and whether the command was a plain `merge` (run without typer)."""
    from datasurface import interrupts
    from datasurface.cli.fast import parse_merge

    interrupts.watch()  # a Ctrl-C that a driver swallows is still an interruption (interrupts.py)

    plain = parse_merge(args)
    if plain is None:
        from datasurface.cli.app import main as typer_main

        gc.enable()
        return typer_main(args), False
    from datasurface.cli.fast import run_merge_command
    from datasurface.cli.outcome import failed, result_line

    return result_line(run_merge_command(*plain, failed)), True


def _exit() -> None:  # pragma: no cover - console script
    # Start-up builds the job's modules and model: objects that live as long as the process and form no
    # garbage. The collector would traverse them again and again while they are made; it starts once they
    # are in place (cli/fast.py) and then leaves them out of its sweeps (gc.freeze).
    gc.disable()
    code, plain_merge = _run(sys.argv[1:])
    if plain_merge:
        # A merge that returned has closed its sessions, stopped its heartbeat thread and printed its result
        # line: the interpreter's teardown (clearing every module, full collections: tens of milliseconds)
        # would only free memory the kernel frees anyway. Do what exit does before it (the
        # atexit handlers: logging's flush among them; the streams), and go.
        import atexit

        atexit._run_exitfuncs()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)
