"""`datasurface-job status`: a person's first look when something is wrong.

Per stream: how old the data consumers see is (the last committed snapshot), the last batch's counts
and duration, an open batch, and the last failure (when, why); then the recent batches. Rich tables
that fit 80 columns.
"""

from __future__ import annotations

import datetime
from contextlib import closing

from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from datasurface import credentials
from datasurface.cdc import slots
from datasurface.cdc.capture import slot_name
from datasurface.db import Endpoint, PgConnection, connect
from datasurface.errors import DataSurfaceError
from datasurface.merge import layout
from datasurface.merge.ledger import BatchLedger
from datasurface.model import load_model
from datasurface.observe.ledgers import PlatformState, StreamState, read_platform


def age(seconds: float | None) -> str:
    """`45s`, `12m`, `3h05m`, `2d04h`: short enough for a narrow column."""
    if seconds is None:
        return "-"
    s = int(max(0, seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def _when(at: datetime.datetime, now: datetime.datetime) -> str:
    return f"{at.astimezone(datetime.UTC):%Y-%m-%d %H:%M:%S} UTC ({age((now - at).total_seconds())} ago)"


def _state(state: PlatformState, stream: StreamState) -> str:
    parts = []
    if stream.open is not None:
        parts.append(f"open batch {stream.open.batch_id} ({stream.open.status}, {age(state.open_age(stream))})")
    if stream.failures_in_a_row:
        parts.append(f"[red]failing: {stream.failures_in_a_row} run(s)[/red]")
    if stream.committed is None and stream.open is None and not stream.failures_in_a_row:
        parts.append("no batch yet")
    return "; ".join(parts) or "[green]ok[/green]"


def streams_table(platform: str, state: PlatformState) -> Table:
    table = Table(title=f"{platform}: {len(state.streams)} stream(s) at {state.now:%Y-%m-%d %H:%M:%S %Z}",
                  box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True, title_justify="left")
    table.add_column("stream", no_wrap=True)
    table.add_column("batch", justify="right", no_wrap=True)
    table.add_column("age", justify="right", no_wrap=True, header_style="bold")
    table.add_column("secs", justify="right", no_wrap=True)
    table.add_column("total", justify="right", no_wrap=True)
    table.add_column("+ins", justify="right", no_wrap=True)
    table.add_column("~upd", justify="right", no_wrap=True)
    table.add_column("-del", justify="right", no_wrap=True)
    table.add_column("state", overflow="fold")
    for s in state.streams.values():
        c = s.committed
        counts = [f"{n:,}" for n in c.counts] if c and c.counts else ["-"] * 4
        secs = f"{c.duration:.1f}" if c and c.duration is not None else "-"
        table.add_row(s.name, str(c.batch_id) if c else "-", age(state.snapshot_age(s)), secs, *counts,
                      _state(state, s))
    return table


def failures(state: PlatformState) -> list[str]:
    lines = []
    for s in state.streams.values():
        f = s.last_failure
        if f is None:
            continue
        why = (f.error or "").removeprefix("datasurface-job: ")
        recovered = "" if s.failures_in_a_row else " [dim](since succeeded)[/dim]"
        lines.append(f"[bold]{s.name}[/bold] last failed {_when(f.finished_at or f.started_at, state.now)}"
                     f"{recovered}: {why}")
    return lines


def size(count: int) -> str:
    """`512 B`, `3.4 MiB`, `1.2 GiB`."""
    value, unit = float(count), "B"
    for next_unit in ("KiB", "MiB", "GiB", "TiB"):
        if value < 1024:
            break
        value, unit = value / 1024, next_unit
    return f"{count} B" if unit == "B" else f"{value:.1f} {unit}"


def slot_lines(schema: str, wal: dict[str, int | str | None]) -> list[str]:
    """One line per cdc stream: the WAL its replication slot keeps on the source."""
    lines = []
    for store, kept in sorted(wal.items()):
        head = f"[bold]{escape(store)}[/bold] replication slot {slot_name(schema, store)}"
        if isinstance(kept, str):
            lines.append(f"{head}: [yellow]{escape(kept)}[/yellow]")
        elif kept is None:
            lines.append(f"{head}: [red]lost the WAL it needed[/red] (the next batch is a full snapshot)")
        else:
            lines.append(f"{head} retains {size(kept)} of WAL on its source")
    return lines


def batches_table(conn: PgConnection, schema: str, store: str | None, limit: int) -> Table:
    table = Table(title=f"last {limit} batches (times in UTC)", box=box.SIMPLE_HEAD, pad_edge=False,
                  collapse_padding=True, title_justify="left")
    for col in ("stream", "batch", "status", "started", "secs", "total", "+ins", "~upd", "-del"):
        table.add_column(col, justify="left" if col in ("stream", "status", "started") else "right",
                         no_wrap=True)
    recent = BatchLedger(conn, schema).recent(store, limit)
    for store_name, dataset, batch_id, status, started, finished, *counts in recent:
        secs = f"{(finished - started).total_seconds():.1f}" if finished else ""
        table.add_row(store_name + (f".{dataset}" if dataset else ""), str(batch_id), status,
                      started.astimezone(datetime.UTC).strftime("%m-%d %H:%M:%S"), secs,
                      *("" if c is None else f"{c:,}" for c in counts))
    return table


def run_status(*, platform: str, store: str | None, limit: int, merge: Endpoint, merge_credential: str,
               console: Console | None = None, model: str | None = None, model_ref: str | None = None,
               model_path: str = "datasurface.yaml", source_timeout: float = 10.0) -> None:
    """`model`: where the cdc stores' sources are, to show the WAL their slots retain (none without it)."""
    schema = layout.platform_schema(platform)
    out = console or Console()
    loaded_model, model_error = None, None
    try:  # the ledgers are shown whatever the model's repository says
        loaded_model = load_model(model, model_ref, model_path) if model else None
    except DataSurfaceError as exc:
        model_error = f"model: {exc}; the WAL that cdc streams' slots retain is not shown"
    with closing(connect(merge, credentials.resolve(merge_credential),
                         application_name="datasurface-job status")) as conn:
        state = read_platform(conn, schema)
        if not state.has_ledger and not state.streams:
            raise DataSurfaceError(f"platform {platform}: schema {schema} has no batch ledger yet "
                                   f"(run `datasurface-job setup` or `merge` first)")
        if store is not None:
            state.streams = {k: v for k, v in state.streams.items() if k[0] == store}
        out.print(streams_table(platform, state))
        for line in failures(state):
            out.print(line)
        if model_error is not None:
            out.print(f"[yellow]{escape(model_error)}[/yellow]")
        if loaded_model is not None:
            mine = {k[0] for k in state.streams}
            wal = slots.retained_by_store(loaded_model, schema, source_timeout, "datasurface-job status")
            for line in slot_lines(schema, {k: v for k, v in wal.items() if k in mine}):
                out.print(line)
        if limit > 0 and state.has_ledger:
            out.print()
            out.print(batches_table(conn, schema, store, limit))
        conn.rollback()
