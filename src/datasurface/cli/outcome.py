"""How a command's outcome reaches the caller, the same for the fast `merge` path and the typer commands:
one line on stderr for a failure (a traceback only with --debug), and `DATASURFACE_RESULT_CODE=<status>`
as the last stdout line."""

from __future__ import annotations

import sys

from datasurface.errors import DataSurfaceError, failure_line

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def configure_logging(debug: bool) -> None:
    import logging

    logging.basicConfig(level=logging.DEBUG if debug else logging.INFO, stream=sys.stderr, format=LOG_FORMAT)


def failed(exc: BaseException, debug: bool) -> int:
    """Report an exception raised by a command as one line (errors.failure_line, the line the run history
    records too); its exit status. Called inside the `except` block; with --debug our own errors also
    print their traceback, and an unexpected error is re-raised (its traceback is the report)."""
    if debug and isinstance(exc, DataSurfaceError):
        import traceback

        traceback.print_exc()
    elif debug and not isinstance(exc, KeyboardInterrupt):
        raise exc
    code, line = failure_line(exc)
    print(line, file=sys.stderr, flush=True)
    return code


def result_line(code: int) -> int:
    sys.stdout.flush()
    print(f"DATASURFACE_RESULT_CODE={code}", flush=True)
    return code
