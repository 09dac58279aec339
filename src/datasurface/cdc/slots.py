"""A platform's replication slots on the sources: the WAL each retains (status, exporter), and dropping the
slots of stores that no longer read changes (setup).

A slot is the platform's only when its name is exactly `slot_name(platform, store)` for a store the
platform's ledger or the model knows: slot names are the server's, and matching by prefix would take
`ds_yellow_eu_orders` (platform yellow_eu) for a slot of platform yellow.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Iterable
from contextlib import closing
from typing import NamedTuple

import psycopg2
from psycopg2 import sql

from datasurface import credentials
from datasurface.cdc.capture import slot_name
from datasurface.db import Endpoint, PgConnection, connect, first_line
from datasurface.errors import DataSurfaceError
from datasurface.model import Model, Store


class Source(NamedTuple):
    """One source database, read with one credential."""

    endpoint: Endpoint
    credential: str


def source_of(store: Store) -> Source:
    return Source(Endpoint(store.source.host, store.source.port, store.source.database), store.source.credential)


def cdc_stores(model: Model) -> list[Store]:
    return [s for s in model.stores if s.source.type == "postgres" and s.source.ingestion == "cdc"]


def open_source(source: Source, timeout: float, application: str) -> PgConnection:
    """A read-mostly session on a source whose every wait is bounded by `timeout` seconds."""
    ms = max(1, int(timeout * 1000))
    return connect(source.endpoint, credentials.resolve(source.credential), application_name=application,
                   connect_timeout=max(2, math.ceil(timeout)),
                   extra={"options": f"-c statement_timeout={ms} -c lock_timeout={ms}",
                          "keepalives": 1, "keepalives_idle": 10, "keepalives_interval": 5, "keepalives_count": 2})


def retained(conn: PgConnection, slots: Iterable[str]) -> dict[str, int | None]:
    """WAL bytes each named slot of this database keeps on the server (None: the slot lost its WAL);
    slots that do not exist are left out."""
    with conn.cursor() as cur:
        cur.execute("""SELECT slot_name::text, pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::bigint
                         FROM pg_replication_slots
                        WHERE database = current_database() AND slot_name = ANY (%s)""", (sorted(set(slots)),))
        found = {name: (None if n is None else int(n)) for name, n in cur.fetchall()}
    conn.rollback()
    return found


class Reading(NamedTuple):
    """What one source said about its slots: bytes per slot name, or why it did not answer."""

    retained: dict[str, int | None]
    error: str | None


def read_retained(wanted: dict[Source, set[str]], timeout: float, application: str,
                  busy: dict[Source, threading.Thread] | None = None) -> dict[Source, Reading]:
    """Every source's slots, read in parallel within `timeout` seconds overall. A source that does not answer
    in time gets an error reading; `busy` (kept by the caller across calls) holds the reads still pending,
    which are not started again while they wait."""
    results: dict[Source, Reading] = {}
    threads: dict[Source, threading.Thread] = {}
    busy = {} if busy is None else busy

    def work(source: Source, names: set[str]) -> None:
        try:
            with closing(open_source(source, timeout, application)) as conn:
                results[source] = Reading(retained(conn, names), None)
        except (psycopg2.Error, DataSurfaceError) as exc:
            results[source] = Reading({}, first_line(exc) if isinstance(exc, psycopg2.Error) else str(exc))
        except Exception as exc:  # a reader never takes its caller down
            results[source] = Reading({}, f"{type(exc).__name__}: {exc}")

    for source, names in wanted.items():
        pending = busy.get(source)
        if pending is not None and pending.is_alive():
            results[source] = Reading({}, "the previous read is still waiting for the source")
            continue
        thread = threading.Thread(target=work, args=(source, names), name="slot-read", daemon=True)
        thread.start()
        threads[source] = thread
    deadline = time.monotonic() + timeout
    for source, thread in threads.items():
        thread.join(max(0.0, deadline - time.monotonic()))
        if thread.is_alive():
            busy[source] = thread
            results[source] = Reading({}, f"no answer within {timeout:g}s")
        else:
            busy.pop(source, None)
    return results


def platform_slots(model: Model, platform_schema: str) -> dict[Source, dict[str, str]]:
    """Per source, the slot name of each cdc store of the model on this platform -> the store's name."""
    wanted: dict[Source, dict[str, str]] = {}
    for store in cdc_stores(model):
        wanted.setdefault(source_of(store), {})[slot_name(platform_schema, store.name)] = store.name
    return wanted


def retained_by_store(model: Model, platform_schema: str, timeout: float,
                      application: str) -> dict[str, int | str | None]:
    """Per cdc store of the model: the WAL its slot retains on its source (None: the slot lost its WAL), or a
    one-line reason (a missing slot, a source that did not answer)."""
    wanted = platform_slots(model, platform_schema)
    readings = read_retained({s: set(names) for s, names in wanted.items()}, timeout, application)
    out: dict[str, int | str | None] = {}
    for source, names in wanted.items():
        reading = readings[source]
        for slot, store in names.items():
            if reading.error is not None:
                out[store] = f"source {source.endpoint.describe()}: {reading.error}"
            elif slot in reading.retained:
                out[store] = reading.retained[slot]
            else:
                out[store] = f"no slot {slot} yet (the next batch is a full snapshot)"
    return out


# --- setup: drop the slots of stores that no longer read changes ------------------------------------------


def _ledger_stores(merge: PgConnection, schema: str) -> dict[str, bool]:
    """Stores with batches on the platform -> whether any of their batches read a slot."""
    with merge.cursor() as cur:
        cur.execute("SELECT to_regclass(format('%%I.%%I', %s::text, 'ds_batches'))", (schema,))
        if cur.fetchone()[0] is None:  # type: ignore[index]
            return {}
        cur.execute(sql.SQL("SELECT store, bool_or(slot_lsn IS NOT NULL) FROM {} GROUP BY store").format(
            sql.Identifier(schema, "ds_batches")))
        found = {store: bool(cdc) for store, cdc in cur.fetchall()}
    merge.rollback()
    return found


def _other_owners(merge: PgConnection, schema: str, slots: set[str]) -> dict[str, str]:
    """Slots whose name is also another platform's slot of a store that platform's ledger (in the same merge
    database) knows: `ds_yellow_eu_orders` is platform yellow's slot of store eu_orders and platform yellow_eu's
    of orders. Such a slot is never dropped. A ledger that cannot be read counts as an owner."""
    owners: dict[str, str] = {}
    with merge.cursor() as cur:
        cur.execute("""SELECT n.nspname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                        WHERE c.relname = 'ds_batches' AND c.relkind IN ('r', 'p') AND n.nspname <> %s""", (schema,))
        others = [r[0] for r in cur.fetchall()]
    merge.rollback()
    for other in others:
        if not any(s.startswith(f"ds_{other.lower()}_") for s in slots):
            continue
        try:
            known: Iterable[str] = _ledger_stores(merge, other)
        except psycopg2.Error:
            merge.rollback()
            known = [s.removeprefix(f"ds_{other.lower()}_") for s in slots]
        for store in known:
            name = slot_name(other, store)
            if name in slots:
                owners[name] = f"platform {other}'s slot of store {store}"
    return owners


def _drop(conn: PgConnection, slot: str) -> bool:
    """Drop the slot if this database holds it; False when it does not."""
    with conn.cursor() as cur:
        cur.execute("""SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots
                        WHERE slot_name = %s AND database = current_database()""", (slot,))
        dropped = cur.rowcount > 0
    conn.commit()
    return dropped


def by_hand(slot: str) -> str:
    return f"SELECT pg_drop_replication_slot('{slot}')"


def drop_stale(merge: PgConnection, model: Model, platform_schema: str, timeout: float = 10.0) -> list[str]:
    """Drop, on every PostgreSQL source the model names, the platform's slots of stores that are not cdc stores
    of the model any more; one line per slot dropped or left for a person. Nothing else is dropped, and a
    source that cannot be reached or refuses is reported, not fatal: the slot's retained WAL stays visible
    in `status` and the exporter."""
    ledger = _ledger_stores(merge, platform_schema)
    cdc = {slot_name(platform_schema, s.name) for s in cdc_stores(model)}
    in_model = {s.name for s in model.stores}
    stale = {slot_name(platform_schema, name): name for name in sorted(in_model | set(ledger))}
    stale = {slot: store for slot, store in stale.items() if slot not in cdc}
    kept = _other_owners(merge, platform_schema, set(stale))
    lines: list[str] = []
    sources: dict[Endpoint, list[str]] = {}
    # dropping a slot needs REPLICATION: a cdc store's credential has it, so it is tried first
    for st in sorted(model.stores, key=lambda s: s.source.ingestion != "cdc"):
        if st.source.type == "postgres":
            sources.setdefault(source_of(st).endpoint, []).append(st.source.credential)
    dropped: set[str] = set()
    for endpoint, creds in sources.items():
        where = f"source {endpoint.describe()}"
        try:
            with closing(open_source(Source(endpoint, creds[0]), timeout, "datasurface-job setup")) as conn:
                for slot in sorted(retained(conn, stale)):
                    if slot in kept:
                        lines.append(f"replication slot {slot} on {where} is kept: besides the slot of this "
                                     f"platform's store {stale[slot]}, its name is {kept[slot]}")
                        continue
                    try:
                        if _drop(conn, slot):
                            dropped.add(slot)
                            lines.append(f"dropped replication slot {slot} on {where}: store {stale[slot]} no "
                                         "longer reads changes")
                    except psycopg2.Error as exc:
                        conn.rollback()
                        lines.append(f"WARNING: replication slot {slot} on {where} could not be dropped "
                                     f"({first_line(exc)}); drop it by hand: {by_hand(slot)}")
        except (psycopg2.Error, DataSurfaceError) as exc:
            reason = first_line(exc) if isinstance(exc, psycopg2.Error) else str(exc)
            lines.append(f"WARNING: {where} not checked for stale replication slots: {reason}")
    for slot, store in stale.items():
        if store not in in_model and ledger.get(store) and slot not in dropped and slot not in kept:
            lines.append(f"store {store} is no longer in the model and its source is unknown: if its replication "
                         f"slot {slot} still exists there, drop it by hand: {by_hand(slot)}")
    return lines
