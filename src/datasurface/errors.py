"""The errors the job reports, each mapped to the exit status of docs/cli.md."""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_RECOVERED = 10


class DataSurfaceError(Exception):
    """A failure reported to the user as one line on stderr, with exit status 1."""

    exit_code = EXIT_FAILURE


class UsageError(DataSurfaceError):
    """Bad command-line usage (exit status 2)."""

    exit_code = EXIT_USAGE


class ModelError(DataSurfaceError):
    """The model file is missing, malformed or invalid."""


class CredentialError(DataSurfaceError):
    """A credential's env vars are missing."""


class DatabaseError(DataSurfaceError):
    """A database could not be reached or refused what was asked of it."""


class StreamBusyError(DataSurfaceError):
    """Another run holds the stream's lock."""


class SnapshotError(DataSurfaceError):
    """The snapshot could not be read or violates the model (duplicate or NULL keys)."""


def failure_line(exc: BaseException) -> tuple[int, str]:
    """The exit status and the one line on stderr for an exception that ends a command.

    Shared by the CLI (which prints the line) and the run history (which records it in `ds_runs.error`),
    so the two never differ.
    """
    if isinstance(exc, DataSurfaceError):
        return exc.exit_code, f"datasurface-job: error: {exc}"
    if isinstance(exc, KeyboardInterrupt):
        return 130, "datasurface-job: interrupted"
    return EXIT_FAILURE, f"datasurface-job: unexpected error: {type(exc).__name__}: {exc} (rerun with --debug)"
