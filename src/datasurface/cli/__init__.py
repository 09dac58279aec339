"""`datasurface-job`: the command line (docs/cli.md).

Errors are one line on stderr (a traceback only with --debug); the last stdout line is always
`DATASURFACE_RESULT_CODE=<status>` so a caller can read the result without parsing logs.

This module is what the console script imports, so it imports nothing heavy: a plain `merge` runs
through cli/fast.py; every other command, and `--help`, through the typer application in cli/app.py.
"""

from __future__ import annotations

import gc
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
    # The interpreter's teardown collects garbage over every object the run built (its modules, the model):
    # ~10 ms of CPU a job, for memory the kernel frees anyway. Frozen objects are left out of those
    # collections; everything else exit does (atexit handlers: logging's flush among them; the streams) runs.
    gc.freeze()
    sys.exit(code)
