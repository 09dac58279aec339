"""`reset-store`: drop one store's objects on one platform, so that its next merge starts again at batch 1.

What a store owns on a platform is found from the model, the ledger and the catalog (a store no longer in the
model, from its ledger rows): per dataset the merge table, its `_current` view and, forensic, its history view
and as-of functions (merge/layout.py, consumers/history.py); its staging tables; its views and functions in the
platform's workspaces (consumers/workspaces.py); its rows of the ledger and of the run history. All of it goes
in one transaction, under the store's stream locks and the platform's DDL lock, and never with CASCADE: an
object the job did not create that depends on one of them (a user's view on a merge table) stops the reset
with a line naming it, since dropping it along would destroy someone else's work without a word.
"""

from __future__ import annotations

from collections.abc import Iterable
from contextlib import suppress
from typing import Any, NamedTuple

import psycopg2
from psycopg2 import sql

from datasurface.cdc.capture import Capture
from datasurface.consumers import objects, workspaces
from datasurface.db import Endpoint, PgConnection
from datasurface.engine import heartbeat
from datasurface.errors import DataSurfaceError, UsageError
from datasurface.faults import killpoint
from datasurface.ingest import sources
from datasurface.merge import ddl, layout
from datasurface.merge.ledger import COMMITTED, Stream
from datasurface.merge.locks import LockRetry, StreamLock
from datasurface.model import Model, Store, load_model
from datasurface.model.names import DatasetNames, dataset_names
from datasurface.sessions import SessionLimits, connection, new_run_id

LEDGER = ("ds_batch_datasets", "ds_batches")
RUN_HISTORY = ("ds_runs", "ds_run_totals")

# drop order: what reads an object goes before it (workspace objects read the platform's views, functions
# return a view's rows, views read the tables)
_ORDER = ("workspace function", "workspace view", "function", "history view", "view", "table", "staging table")


class Item(NamedTuple):
    """One object reset-store drops."""

    kind: str  # one of _ORDER
    schema: str
    name: str
    oid: int
    args: str = ""  # a function's argument types

    @property
    def is_function(self) -> bool:
        return self.kind.endswith("function")

    @property
    def ident(self) -> sql.Composable:
        if self.is_function:
            return sql.SQL("{}({})").format(sql.Identifier(self.schema, self.name), sql.SQL(self.args))
        return sql.Identifier(self.schema, self.name)

    @property
    def label(self) -> str:
        args = f"({self.args})" if self.is_function else ""
        return f"{self.kind} {self.schema}.{self.name}{args}"

    def drop(self) -> sql.Composable:
        what = "FUNCTION" if self.is_function else "TABLE" if self.kind.endswith("table") else "VIEW"
        return sql.SQL(f"DROP {what} {{}} RESTRICT").format(self.ident)


class Plan(NamedTuple):
    """Everything of one store on one platform."""

    schema: str
    store: str
    in_model: bool
    mode: str | None  # live | forensic; None when the store has no table here
    items: tuple[Item, ...]
    rows: tuple[tuple[str, int], ...]  # (ledger or run-history table, the store's rows in it)
    streams: frozenset[Stream]
    committed: int  # the store's committed batches here
    blockers: tuple[tuple[str, str], ...] = ()  # (an object the job did not create, what of the plan it uses)
    parts: tuple[str, ...] = ()  # indexes, triggers and policies someone added to the store's tables

    @property
    def empty(self) -> bool:
        return not self.items and not any(n for _, n in self.rows)

    def refuse(self) -> None:
        """Objects the job did not create depend on the plan's: never dropped along, so nothing is dropped."""
        if self.blockers:
            named = "; ".join(f"{what} (on {on})" for what, on in self.blockers)
            raise DataSurfaceError(
                f"store {self.store} on platform {self.schema}: objects the job did not create depend on what "
                f"reset-store would drop: {named}; drop or change them first (reset-store never drops what the "
                f"job did not create, and never drops with CASCADE)")

    def relations(self) -> list[str]:
        return [f'"{i.schema}"."{i.name}"' for i in self.items if not i.is_function]

    def lines(self, platform: str, source: list[str]) -> list[str]:
        where = f"store {self.store} on platform {self.schema}" + (f" ({self.mode})" if self.mode else "")
        if not self.in_model:
            where += ", a store no longer in the model (found from the platform's ledger and catalog)"
        out = [f"reset-store: {where}:"]
        out += [f"  drop {i.label}" for i in self.items]
        out += [f"  with it: {part}" for part in self.parts]
        out += [f"  delete {n} row(s) of {self.schema}.{t}" for t, n in self.rows if n]
        out += [f"  {line}" for line in source]
        if self.mode == layout.FORENSIC:
            out.append(f"the store's forensic history on platform {self.schema} is lost: every version of its rows "
                       f"from its {self.committed} committed batch(es), and what its history views and as-of "
                       f"functions showed")
        if any(i.kind.startswith("workspace") for i in self.items):
            out.append(f"its workspace views come back at the next `datasurface-job setup --platform {platform}`")
        out.append(f"the next merge of store {self.store} on platform {self.schema} starts again at batch 1 from "
                   f"a full snapshot")
        return out


def drop_source_state(store: Store | None, platform_schema: str, *, dry_run: bool) -> list[str]:
    """What the store keeps on its source for this platform, dropped (or, with `dry_run`, only described): one
    line per thing, for the reset's listing.

    A change-data-capture store (`source.ingestion: cdc`) keeps a logical replication slot on its source. It
    is dropped once the merge side's objects are dropped in the reset's transaction, before that commits: a
    failure here rolls all of it back, and a slot dropped by a reset whose commit then fails is, to the next
    merge, a missing slot (a full snapshot, as for any lost slot). Snapshot ingestion keeps nothing on the
    source. A store no longer in the model (None) names no source here: the platform's `setup` drops the
    slots of stores that are no longer change-data-capture stores."""
    if store is None or store.source.ingestion != "cdc":
        return []
    with sources.open_source(store, "reset-store") as source:
        capture = Capture(source.conn, store, platform_schema)  # type: ignore[attr-defined]
        if capture.state() is None:
            return []
        if not dry_run:
            capture.release(10.0)
            capture.drop()
    return [f"  drop replication slot {capture.slot} on {sources.describe(store)}"]


# --- finding the store's objects ------------------------------------------------------------------

class _Rel(NamedTuple):
    oid: int
    kind: str  # pg_class.relkind
    live: bool  # has ds_batch_id
    forensic: bool  # has ds_batch_in and ds_batch_out


def _relations(conn: PgConnection, wanted: Iterable[tuple[str, str]]) -> dict[tuple[str, str], _Rel]:
    pairs = sorted(set(wanted))
    with conn.cursor() as cur:
        cur.execute("""
            SELECT n.nspname, c.relname, c.oid, c.relkind::text,
                   EXISTS (SELECT FROM pg_catalog.pg_attribute a WHERE a.attrelid = c.oid
                              AND a.attname = 'ds_batch_id' AND NOT a.attisdropped),
                   (SELECT count(*) FROM pg_catalog.pg_attribute a WHERE a.attrelid = c.oid
                      AND a.attname IN ('ds_batch_in', 'ds_batch_out') AND NOT a.attisdropped) = 2
              FROM pg_catalog.pg_class c
              JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
              JOIN ROWS FROM (pg_catalog.unnest(%s::text[]), pg_catalog.unnest(%s::text[])) AS w(s, r)
                ON w.s = n.nspname AND w.r = c.relname""",
                    ([s for s, _ in pairs], [r for _, r in pairs]))
        return {(s, r): _Rel(oid, kind, live, forensic) for s, r, oid, kind, live, forensic in cur.fetchall()}


def _exists(conn: PgConnection, schema: str, table: str) -> bool:
    with conn.cursor() as cur:
        cur.execute("SELECT pg_catalog.to_regclass(pg_catalog.format('%%I.%%I', %s::text, %s::text)) IS NOT NULL",
                    (schema, table))
        return bool(cur.fetchone()[0])  # type: ignore[index]


def _column(conn: PgConnection, query: str, schema: str, table: str, *params: object) -> list[Any]:
    """The first column of a query over one table of the platform schema (`{}` is the table)."""
    with conn.cursor() as cur:
        cur.execute(sql.SQL(query).format(sql.Identifier(schema, table)), params)
        return [r[0] for r in cur.fetchall()]


class _Ledger(NamedTuple):
    """What the platform's ledger says of the store, and of the others."""

    streams: set[Stream]
    datasets: set[str]
    staging: set[str]
    modes: set[str]
    committed: int
    others: dict[str, str]  # a merge table name -> the other store that owns it

    @staticmethod
    def read(conn: PgConnection, schema: str, store: str) -> _Ledger:
        if not _exists(conn, schema, "ds_batches"):
            return _Ledger(set(), set(), set(), set(), 0, {})
        with conn.cursor() as cur:
            t = sql.Identifier(schema, "ds_batches")
            cur.execute(sql.SQL("SELECT DISTINCT dataset FROM {} WHERE store = %s").format(t), (store,))
            streams = {Stream(store, r[0]) for r in cur.fetchall()}
        datasets = {d for s in streams if (d := s.dataset) is not None}
        datasets |= {str(d) for d in _column(
            conn, """SELECT DISTINCT k FROM {}, pg_catalog.jsonb_object_keys(staged_rows) AS k
                      WHERE store = %s AND pg_catalog.jsonb_typeof(staged_rows) = 'object'""", schema, "ds_batches",
            store)}
        staging = {str(s) for s in _column(conn, "SELECT DISTINCT pg_catalog.unnest(staging_tables) FROM {} "
                                                 "WHERE store = %s", schema, "ds_batches", store)}
        modes = {str(m) for m in _column(conn, "SELECT DISTINCT mode FROM {} WHERE store = %s", schema, "ds_batches",
                                         store)}
        committed = int(_column(conn, "SELECT count(*) FROM {} WHERE store = %s AND status = %s", schema,
                                "ds_batches", store, COMMITTED)[0])
        pairs: set[tuple[str, str]] = set()
        with conn.cursor() as cur:
            cur.execute(sql.SQL("SELECT DISTINCT store, dataset FROM {} WHERE store <> %s AND dataset IS NOT NULL"
                                ).format(sql.Identifier(schema, "ds_batches")), (store,))
            pairs |= set(cur.fetchall())
            if _exists(conn, schema, "ds_batch_datasets"):
                t = sql.Identifier(schema, "ds_batch_datasets")
                cur.execute(sql.SQL("SELECT DISTINCT dataset FROM {} WHERE store = %s").format(t), (store,))
                datasets |= {r[0] for r in cur.fetchall()}
                cur.execute(sql.SQL("SELECT DISTINCT store, dataset FROM {} WHERE store <> %s").format(t), (store,))
                pairs |= set(cur.fetchall())
        others = {dataset_names(s, d).table: s for s, d in pairs}
        return _Ledger(streams, datasets, staging, modes, committed, others)


def _streams_of(store: Store) -> set[Stream]:
    if store.consistency == "single_dataset":
        return {Stream(store.name, d.name) for d in store.datasets}
    return {Stream(store.name, None)}


def _tables_by_staging(conn: PgConnection, schema: str, store: str, staging: set[str]) -> set[str]:
    """Merge tables of the store whose datasets only its open batches name (by their staging tables)."""
    if not staging:
        return set()
    prefix = f"{store.lower()}_"
    with conn.cursor() as cur:
        cur.execute("""SELECT c.relname FROM pg_catalog.pg_class c
                         JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
                        WHERE n.nspname = %s AND c.relkind IN ('r', 'p') AND pg_catalog.left(c.relname, %s) = %s""",
                    (schema, len(prefix), prefix))
        return {r[0] for r in cur.fetchall() if layout.staging_name(r[0]) in staging}


def _workspace_schemas(conn: PgConnection, schema: str) -> list[str]:
    with conn.cursor() as cur:
        cur.execute("""SELECT nspname FROM pg_catalog.pg_namespace
                        WHERE pg_catalog.obj_description(oid, 'pg_namespace') = %s ORDER BY 1""",
                    (workspaces.schema_mark(schema),))
        return [r[0] for r in cur.fetchall()]


def _function_oids(conn: PgConnection, schema: str, found: list[objects.Owned]) -> list[int]:
    with conn.cursor() as cur:
        cur.execute("SELECT pg_catalog.to_regprocedure(f)::oid FROM pg_catalog.unnest(%s::text[]) "
                    "WITH ORDINALITY AS u(f, i) ORDER BY i", ([o.ident(schema).as_string(conn) for o in found],))
        return [r[0] for r in cur.fetchall()]


def _owned_items(conn: PgConnection, schema: str, wanted: dict[tuple[str, str], str]) -> list[Item]:
    """The job's (marked) views and functions of `schema` among `wanted`: (kind, name) -> the item's kind."""
    found = [o for key, o in sorted(objects.owned(conn, schema).items()) if key in wanted]
    views = _relations(conn, [(schema, o.name) for o in found if o.kind == "view"])
    functions = iter(_function_oids(conn, schema, [o for o in found if o.kind == "function"]))
    return [Item(wanted[(o.kind, o.name)], schema, o.name,
                 views[(schema, o.name)].oid if o.kind == "view" else next(functions), o.args)
            for o in found]


def discover(conn: PgConnection, schema: str, store: str, model: Model) -> Plan:
    """The store's objects and rows on the platform, and what depends on them (read-only); refuses a name
    another store claims or a relation under the store's table name that is not a merge table."""
    with conn.cursor() as cur:
        cur.execute("SELECT EXISTS (SELECT FROM pg_catalog.pg_namespace WHERE nspname = %s)", (schema,))
        if not cur.fetchone()[0]:  # type: ignore[index]
            raise DataSurfaceError(f"platform {schema}: the merge database has no schema {schema} (nothing was ever "
                                   f"merged or set up on this platform)")
    model_store = next((s for s in model.stores if s.name == store), None)
    ledger = _Ledger.read(conn, schema, store)
    datasets = ledger.datasets | {d.name for d in (model_store.datasets if model_store else ())}
    tables = {dataset_names(store, d).table for d in datasets}
    tables |= _tables_by_staging(conn, schema, store, ledger.staging)
    others = dict(ledger.others)
    others.update({dataset_names(s.name, d.name).table: s.name for s in model.stores if s.name != store
                   for d in s.datasets})
    shared = sorted(t for t in tables if t in others)
    if shared:
        raise DataSurfaceError(
            f"store {store}: {', '.join(f'{schema}.{t} (also store {others[t]})' for t in shared)} "
            f"belongs to another store too by its name; reset-store leaves it: drop it by hand if it is not wanted")

    names = {t: DatasetNames(t) for t in tables}
    staging = ledger.staging | {layout.staging_name(t) for t in tables}
    rels = _relations(conn, [(schema, r) for t in tables for r in (t, names[t].current)]
                      + [(schema, s) for s in staging])
    items: list[Item] = []
    forensic = False
    for t in sorted(tables):
        rel = rels.get((schema, t))
        if rel is not None:
            if rel.kind not in ("r", "p") or not (rel.live or rel.forensic):
                raise DataSurfaceError(
                    f"store {store}: {schema}.{t} has the name of the store's merge table but is not one (no batch "
                    f"columns); reset-store drops only what the job created: rename or drop it by hand")
            items.append(Item("table", schema, t, rel.oid))
            forensic |= rel.forensic
        view = rels.get((schema, names[t].current))
        if view is not None and view.kind == "v":
            items.append(Item("view", schema, names[t].current, view.oid))
    items += [Item("staging table", schema, s, rel.oid) for s in sorted(staging)
              if (rel := rels.get((schema, s))) is not None and rel.kind == "r"]
    platform_wanted = {}
    for t in tables:
        platform_wanted[("view", names[t].history)] = "history view"
        platform_wanted[("function", names[t].as_of)] = "function"
        platform_wanted[("function", names[t].as_of_batch)] = "function"
    items += _owned_items(conn, schema, platform_wanted)
    workspace_wanted = {}
    for t in tables:
        workspace_wanted[("view", t)] = workspace_wanted[("view", names[t].history)] = "workspace view"
        workspace_wanted[("function", names[t].as_of)] = "workspace function"
    for workspace_schema in _workspace_schemas(conn, schema):
        items += _owned_items(conn, workspace_schema, workspace_wanted)
    items.sort(key=lambda i: (_ORDER.index(i.kind), i.schema, i.name))

    rows = tuple((t, int(_column(conn, "SELECT count(*) FROM {} WHERE store = %s", schema, t, store)[0]))
                 for t in (*LEDGER, *RUN_HISTORY) if _exists(conn, schema, t))
    mode = layout.FORENSIC if forensic or layout.FORENSIC in ledger.modes else (
        layout.LIVE if any(i.kind == "table" for i in items) or ledger.modes else None)
    streams = frozenset(ledger.streams | (_streams_of(model_store) if model_store else set()))
    plan = Plan(schema, store, model_store is not None, mode, tuple(items), rows, streams, ledger.committed)
    if model_store is None and plan.empty:
        known = ", ".join(s.name for s in model.stores) or "none"
        raise DataSurfaceError(f"unknown store {store!r}: it is not in the model (which has: {known}) and platform "
                               f"{schema} has nothing of it")
    return plan._replace(blockers=_dependents(conn, plan), parts=_parts(conn, plan))


def _parts(conn: PgConnection, plan: Plan) -> tuple[str, ...]:
    """What someone else added to the store's tables (an index, a trigger, a policy): a part of a table goes
    with it, as in any DROP TABLE, and the listing says so."""
    tables = {i.oid: i for i in plan.items if i.kind == "table"}
    with conn.cursor() as cur:
        cur.execute("""
            SELECT x.indrelid, 'index', i.relname FROM pg_catalog.pg_index x
              JOIN pg_catalog.pg_class i ON i.oid = x.indexrelid WHERE x.indrelid = ANY(%(t)s::oid[])
            UNION ALL
            SELECT tgrelid, 'trigger', tgname FROM pg_catalog.pg_trigger
             WHERE tgrelid = ANY(%(t)s::oid[]) AND NOT tgisinternal
            UNION ALL
            SELECT polrelid, 'policy', polname FROM pg_catalog.pg_policy WHERE polrelid = ANY(%(t)s::oid[])
            ORDER BY 1, 2, 3""", {"t": list(tables)})
        found = cur.fetchall()
    return tuple(f"{kind} {name} on table {tables[oid].schema}.{tables[oid].name} (not the job's)"
                 for oid, kind, name in found
                 if not (kind == "index" and name in DatasetNames(tables[oid].name).owned()))


def _dependents(conn: PgConnection, plan: Plan) -> tuple[tuple[str, str], ...]:
    """Objects outside the plan that depend on something in it (a view, a function, a foreign key, a column of
    its row type), with what they depend on. A part of one of the plan's relations (its constraints, triggers,
    defaults, policies, indexes) is not one: it goes with its relation, as in any DROP TABLE."""
    rels = [i.oid for i in plan.items if not i.is_function]
    procs = [i.oid for i in plan.items if i.is_function]
    with conn.cursor() as cur:
        cur.execute("""
            WITH rels AS (SELECT pg_catalog.unnest(%(rels)s::oid[]) AS oid),
                 procs AS (SELECT pg_catalog.unnest(%(procs)s::oid[]) AS oid),
                 dep AS (
                    SELECT d.classid, d.objid, d.refclassid, d.refobjid,
                           CASE d.classid  -- the relation the dependent object is a part of, if any
                               WHEN 'pg_catalog.pg_rewrite'::pg_catalog.regclass
                                   THEN (SELECT ev_class FROM pg_catalog.pg_rewrite WHERE oid = d.objid)
                               WHEN 'pg_catalog.pg_constraint'::pg_catalog.regclass
                                   THEN (SELECT conrelid FROM pg_catalog.pg_constraint WHERE oid = d.objid)
                               WHEN 'pg_catalog.pg_trigger'::pg_catalog.regclass
                                   THEN (SELECT tgrelid FROM pg_catalog.pg_trigger WHERE oid = d.objid)
                               WHEN 'pg_catalog.pg_attrdef'::pg_catalog.regclass
                                   THEN (SELECT adrelid FROM pg_catalog.pg_attrdef WHERE oid = d.objid)
                               WHEN 'pg_catalog.pg_policy'::pg_catalog.regclass
                                   THEN (SELECT polrelid FROM pg_catalog.pg_policy WHERE oid = d.objid)
                               WHEN 'pg_catalog.pg_class'::pg_catalog.regclass
                                   THEN coalesce((SELECT indrelid FROM pg_catalog.pg_index WHERE indexrelid = d.objid),
                                                 d.objid)
                           END AS rel
                      FROM pg_catalog.pg_depend d
                     WHERE d.deptype = 'n' AND (
                           (d.refclassid = 'pg_catalog.pg_class'::pg_catalog.regclass
                            AND d.refobjid IN (SELECT oid FROM rels))
                        OR (d.refclassid = 'pg_catalog.pg_proc'::pg_catalog.regclass
                            AND d.refobjid IN (SELECT oid FROM procs))
                        OR (d.refclassid = 'pg_catalog.pg_type'::pg_catalog.regclass
                            AND d.refobjid IN (SELECT c.reltype FROM pg_catalog.pg_class c
                                                WHERE c.oid IN (SELECT oid FROM rels)))))
            SELECT CASE WHEN classid = 'pg_catalog.pg_rewrite'::pg_catalog.regclass
                        THEN pg_catalog.pg_describe_object('pg_catalog.pg_class'::pg_catalog.regclass, rel, 0)
                        ELSE pg_catalog.pg_describe_object(classid, objid, 0) END,
                   pg_catalog.string_agg(DISTINCT pg_catalog.pg_describe_object(
                       CASE WHEN refclassid = 'pg_catalog.pg_type'::pg_catalog.regclass
                            THEN 'pg_catalog.pg_class'::pg_catalog.regclass ELSE refclassid END,
                       CASE WHEN refclassid = 'pg_catalog.pg_type'::pg_catalog.regclass
                            THEN (SELECT c.oid FROM pg_catalog.pg_class c WHERE c.reltype = refobjid)
                            ELSE refobjid END, 0), ', ')
              FROM dep
             WHERE rel IS DISTINCT FROM 0 AND NOT coalesce(rel IN (SELECT oid FROM rels), false)
               AND NOT (classid = 'pg_catalog.pg_proc'::pg_catalog.regclass AND objid IN (SELECT oid FROM procs))
             GROUP BY 1 ORDER BY 1""", {"rels": rels, "procs": procs})
        return tuple((what, on) for what, on in cur.fetchall())


# --- dropping -------------------------------------------------------------------------------------

def _lock(conn: PgConnection, plan: Plan) -> None:
    """The tables to drop, first: every session reading them (through any view) is waited for here, before
    anything is dropped. Views are not locked here: locking a view locks what it reads too, the ledger of every
    store among them; each view's own lock comes with its DROP."""
    relations = [sql.Identifier(i.schema, i.name) for i in plan.items if i.kind.endswith("table")]
    if relations:
        with conn.cursor() as cur:
            cur.execute(sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(sql.SQL(", ").join(relations)))


def _drop(conn: PgConnection, plan: Plan) -> None:
    with conn.cursor() as cur:
        for item in plan.items:
            try:
                cur.execute(item.drop())
            except psycopg2.errors.DependentObjectsStillExist as exc:  # something appeared since the check
                detail = (exc.diag.message_detail or "see the server log").splitlines()[0]
                raise DataSurfaceError(f"cannot drop {item.label}: other objects depend on it ({detail}); nothing "
                                       f"was dropped") from None
        for table, n in plan.rows:
            if n:
                cur.execute(sql.SQL("DELETE FROM {} WHERE store = %s").format(sql.Identifier(plan.schema, table)),
                            (plan.store,))


def run_reset_store(*, model: str, model_ref: str | None, model_path: str, platform: str, store: str,
                    merge: Endpoint, merge_credential: str, dry_run: bool = False, yes: bool = False,
                    limits: SessionLimits | None = None) -> None:
    limits = limits or SessionLimits()
    schema = layout.platform_schema(platform)
    loaded = load_model(model, model_ref, model_path)
    model_store = next((s for s in loaded.stores if s.name == store), None)
    run_id = new_run_id()
    with heartbeat(merge, merge_credential, run_id, limits), \
            connection(merge, merge_credential, "merge", run_id, limits) as conn:
        first = discover(conn, schema, store, loaded)
        conn.rollback()
        if first.empty:
            print(f"store {store} on platform {schema}: nothing to reset")
            return
        if dry_run or not yes:
            for line in first.lines(platform, drop_source_state(model_store, schema, dry_run=True)):
                print(line)
            first.refuse()
            if dry_run:
                print("dry run: nothing was changed")
                return
            raise UsageError("reset-store drops what is listed above, for good: run it again with --yes to drop it "
                             "(--dry-run only lists it)")
        first.refuse()
        plan, source = _reset(conn, first, model_store, loaded, limits)
    for line in plan.lines(platform, source):
        print(line)
    print(f"store {store} on platform {schema}: reset")


def _reset(conn: PgConnection, first: Plan, model_store: Store | None, model: Model,
           limits: SessionLimits) -> tuple[Plan, list[str]]:
    """Under the store's stream locks (no run of it merges meanwhile) and the platform's DDL lock (no run
    creates or evolves objects meanwhile): check again, drop, drop the source's state, commit. The step that
    drops is retried as a whole when a lock wait times out (merge/locks.py): it commits nothing itself."""
    held: list[StreamLock] = []
    try:
        for stream in sorted(first.streams, key=lambda s: s.key):
            lock = StreamLock(conn, first.schema, stream, limits)
            lock.acquire()
            held.append(lock)

        def step() -> Plan:
            ddl.lock(conn, first.schema)
            plan = discover(conn, first.schema, first.store, model)
            if not plan.streams <= first.streams:
                raise DataSurfaceError(f"store {first.store} on platform {first.schema} gained a stream while "
                                       f"reset-store was starting; run it again")
            plan.refuse()
            _lock(conn, plan)
            _drop(conn, plan)
            return plan

        plan = LockRetry(conn, limits).run(f"resetting store {first.store} on platform {first.schema}", step,
                                           first.relations, exclusive=True)
        source = drop_source_state(model_store, first.schema, dry_run=False)
        killpoint("reset-store:dropped")
        conn.commit()
        return plan, source
    finally:
        with suppress(Exception):
            conn.rollback()
            for lock in reversed(held):
                lock.release()
