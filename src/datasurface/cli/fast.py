"""`merge` without typer, click or rich: what a platform runs every few minutes for every store.

Building the typer application (importing typer, click and rich, then turning annotations into click
parameters) costs more than the rest of the job's start-up together. A plain, well-formed `merge`
invocation is parsed here from the table below; anything else (`--help`, a misspelt or missing option,
a value that does not convert, `--version`, an unusual environment) is left to the typer application,
which then gives its usual answer. tests/engine/test_cli_fast.py checks that this table says exactly
what the typer command declares (flags, environment variables, types, defaults).

For the same reason the value classes a merge builds (the model, the layouts, the ledger's rows, the
sessions' settings) are NamedTuples, not dataclasses: a dataclass compiles its generated methods when its
module is imported (about 0.5 ms a class) and `dataclasses` imports `inspect`; for the merge's 22 classes,
some 14 ms of every start (`python -X importtime`).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

REQUIRED = object()


class Opt(NamedTuple):
    dest: str
    flag: str
    env: str
    kind: type
    default: Any = REQUIRED
    many: bool = False  # may be repeated: every value, in order (click's multiple=True)


MERGE_OPTIONS = (
    Opt("platform", "--platform", "DATASURFACE_PLATFORM", str),
    Opt("mode", "--mode", "DATASURFACE_MODE", str),
    Opt("store", "--store", "DATASURFACE_STORE", str, many=True),
    Opt("merge_host", "--merge-host", "DATASURFACE_MERGE_HOST", str),
    Opt("merge_database", "--merge-database", "DATASURFACE_MERGE_DATABASE", str),
    Opt("merge_credential", "--merge-credential", "DATASURFACE_MERGE_CREDENTIAL", str),
    Opt("model", "--model", "DATASURFACE_MODEL", str),
    Opt("model_ref", "--model-ref", "DATASURFACE_MODEL_REF", str, None),
    Opt("model_path", "--model-path", "DATASURFACE_MODEL_PATH", str, "datasurface.yaml"),
    Opt("merge_port", "--merge-port", "DATASURFACE_MERGE_PORT", int, 5432),
    Opt("lock_wait", "--lock-wait", "DATASURFACE_LOCK_WAIT", float, 60.0),
    Opt("lock_timeout", "--lock-timeout", "DATASURFACE_LOCK_TIMEOUT", float, 300.0),
    Opt("session_timeout", "--session-timeout", "DATASURFACE_SESSION_TIMEOUT", float, 60.0),
    Opt("orphan_timeout", "--orphan-timeout", "DATASURFACE_ORPHAN_TIMEOUT", float, 15.0),
    Opt("parallel", "--parallel", "DATASURFACE_PARALLEL", int, 1),
)
ROOT_ENV = ("DATASURFACE_DEBUG",)  # the root callback's environment: any of it set -> typer
_INT = re.compile(r"^[+-]?[0-9]+$")
_FLOAT = re.compile(r"^[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?$")


def _convert(opt: Opt, text: str) -> Any:
    """The value, or None when it is not plainly of the option's type (typer then reports it)."""
    if opt.kind is int:
        return int(text) if _INT.match(text) else None
    if opt.kind is float:
        return float(text) if _FLOAT.match(text) else None
    return text if text else None


def parse_merge(argv: Sequence[str], environ: dict[str, str] | None = None) -> tuple[bool, dict[str, Any]] | None:
    """(debug, merge's keyword arguments) for a plain `[--debug] merge --opt value ...`; None otherwise."""
    env = os.environ if environ is None else environ
    args = list(argv)
    debug = bool(args) and args[0] == "--debug"
    if debug:
        args = args[1:]
    if not args or args[0] != "merge" or any(name in env for name in ROOT_ENV):
        return None
    by_flag = {o.flag: o for o in MERGE_OPTIONS}
    given: dict[str, list[str]] = {}
    rest = args[1:]
    i = 0
    while i < len(rest):
        flag, eq, value = rest[i].partition("=")
        opt = by_flag.get(flag)
        if opt is None:  # --help, --, a positional, an unknown or abbreviated option
            return None
        if not eq:
            if i + 1 >= len(rest):
                return None
            value = rest[i + 1]
            i += 1
        given.setdefault(opt.dest, []).append(value)  # a repeated option: the last, or every one (many)
        i += 1
    values: dict[str, Any] = {}
    for opt in MERGE_OPTIONS:
        if opt.dest in given:
            texts = given[opt.dest]
        elif opt.env in env:
            texts = [env[opt.env]]
        else:
            if opt.default is REQUIRED:
                return None
            values[opt.dest] = opt.default
            continue
        converted = [_convert(opt, text) for text in (texts if opt.many else texts[-1:])]
        if None in converted:
            return None
        values[opt.dest] = converted if opt.many else converted[0]
    return debug, values


def run_merge_command(debug: bool, values: dict[str, Any], report: Callable[[BaseException, bool], int]) -> int:
    """What the typer `merge` command does, with the same outcome mapping (`report`)."""
    from datasurface.cli.outcome import configure_logging

    try:
        configure_logging(debug)
        from datasurface.db import Endpoint
        from datasurface.sessions import limits_from_options, merge_run_ahead, new_run_id

        limits = limits_from_options(values["lock_wait"], values["lock_timeout"], values["session_timeout"],
                                     values["orphan_timeout"])
        merge = Endpoint(host=values["merge_host"], port=values["merge_port"], database=values["merge_database"])
        run_id = new_run_id()
        # the run's sessions open while the engine is imported and the model read (sessions.Ahead)
        ahead = merge_run_ahead(merge, values["merge_credential"], run_id, limits)
        from datasurface.group import run_merge

        return run_merge(model=values["model"], model_ref=values["model_ref"], model_path=values["model_path"],
                         platform=values["platform"], mode=values["mode"], store=values["store"],
                         merge=merge, merge_credential=values["merge_credential"], limits=limits, run_id=run_id,
                         ahead=ahead, parallel=values["parallel"])
    except (Exception, KeyboardInterrupt) as exc:
        return report(exc, debug)
