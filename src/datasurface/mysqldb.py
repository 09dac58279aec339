"""What every MySQL / MariaDB client of the package shares: identifier quoting and one-line driver errors.

The source dialect (ingest) and the simulator both talk to MySQL through PyMySQL; neither imports the other.
"""

from __future__ import annotations

from typing import Any


def quote(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"


def error_code(exc: BaseException) -> int | None:
    """The server's (or client's) error number, e.g. 1146; None for an error without one."""
    args = getattr(exc, "args", ())
    return args[0] if args and isinstance(args[0], int) else None


def driver_message(exc: BaseException) -> str:
    """`(1045) Access denied for user ...`: the driver's own code and text, never SQLAlchemy's wrapper
    (which would add the statement and a link)."""
    orig = getattr(exc, "orig", None) or exc
    args: tuple[Any, ...] = tuple(getattr(orig, "args", ()))
    if len(args) >= 2 and isinstance(args[0], int):
        lines = str(args[1]).strip().splitlines()
        return f"({args[0]}) {lines[0] if lines else ''}".strip()
    text = str(orig).strip()
    return text.splitlines()[0] if text else type(orig).__name__
