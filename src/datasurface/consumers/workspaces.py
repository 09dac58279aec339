"""Workspaces (docs/consumers.md): per workspace of a platform, schema `ws_<name>` holding, per listed dataset, a
view `<store>_<dataset>` (the current rows) and, on a forensic platform, a view `<store>_<dataset>_history`
and a function `<store>_<dataset>_as_of(timestamptz)`, plus a view `batches`; the workspace's (existing)
role gets USAGE on the schema and SELECT/EXECUTE on exactly those objects.

How the role reads without any right on the platform schema: the views run with their owner's (the job's)
rights, as every PostgreSQL view does, and the as-of function is SECURITY INVOKER and reads only the
workspace's own `_history` and `batches` views. The views are security_barrier views, so a function of the
reader's own (in pg_temp, say) given in a WHERE clause never sees rows a view filters out (other stores'
batches, versions that are not current). Nothing in the platform schema, the ledger or another workspace is
granted.

`setup` reconciles (creates, evolves, drops what was removed, fixes grants); `merge` only evolves the
objects that exist (an added column appears in them) and never fails on a workspace's account. Only
objects with the job's mark (objects.py) are ever dropped, never with CASCADE.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import NamedTuple

import psycopg2
from psycopg2 import sql

from datasurface.db import PgConnection
from datasurface.errors import DataSurfaceError
from datasurface.merge.layout import FORENSIC, DatasetLayout
from datasurface.model import Model, Store, Workspace

from . import history, objects

log = logging.getLogger("datasurface")

BATCHES = "batches"
BATCH_COLUMNS = ("store", "dataset", "batch_id", "snapshot_at", "finished_at", "rows_total", "rows_inserted",
                 "rows_updated", "rows_deleted")


def schema_mark(platform_schema: str) -> str:
    return f"{objects.MARK} workspace of platform {platform_schema}"


def of_platform(model: Model, platform_schema: str) -> list[Workspace]:
    return [workspace for workspace in model.workspaces if workspace.platform.lower() == platform_schema]


class Target(NamedTuple):
    """One workspace on this platform, with the layouts of its datasets."""

    workspace: Workspace
    layouts: tuple[DatasetLayout, ...]
    stores: tuple[Store, ...]

    @property
    def schema(self) -> str:
        return self.workspace.schema


def targets(model: Model, platform_schema: str, layouts: list[DatasetLayout], stores: Iterable[Store]) -> list[Target]:
    """The platform's workspaces; a workspace listing a store this setup does not cover is an error."""
    by_key = {(layout.store, layout.dataset.name): layout for layout in layouts}
    chosen = {s.name: s for s in stores}
    result = []
    for i, workspace in enumerate(model.workspaces):
        if workspace.platform.lower() != platform_schema:
            continue
        for j, item in enumerate(workspace.datasets):
            if item.store not in chosen:
                raise DataSurfaceError(
                    f"workspace {workspace.name} (workspaces[{i}].datasets[{j}]) lists store {item.store}, which "
                    f"platform {workspace.platform} does not ingest (its stores here: {', '.join(chosen) or 'none'}); "
                    f"add the store to the platform or remove it from the workspace")
        workspace_layouts = tuple(by_key[(d.store, d.dataset)] for d in workspace.datasets)
        stores = tuple(chosen[name] for name in dict.fromkeys(d.store for d in workspace.datasets))
        result.append(Target(workspace, workspace_layouts, stores))
    return result


def check_roles(conn: PgConnection, wanted: list[Target]) -> None:
    with conn.cursor() as cur:
        for t in wanted:
            cur.execute("SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = %s", (t.workspace.role,))
            if cur.fetchone() is None:
                raise DataSurfaceError(
                    f"workspace {t.workspace.name}: role {t.workspace.role!r} does not exist in the merge database "
                    f"(the job never creates roles: create it, or name an existing role in the model)")


def relations(wanted: list[Target]) -> list[str]:
    """What reconciling locks, to name the sessions that block it."""
    names = []
    for t in wanted:
        names.append(f'"{t.schema}"."{BATCHES}"')
        for layout in t.layouts:
            names.append(f'"{t.schema}"."{layout.table}"')
            if layout.mode == FORENSIC:
                names.append(f'"{t.schema}"."{history.history_view(layout)}"')
    return names


# --- the objects of one workspace -------------------------------------------------------------------------

def _batches_view(conn: PgConnection, target: Target, platform_schema: str) -> bool:
    per_store = []
    for store in target.stores:
        listed = [d.dataset for d in target.workspace.datasets if d.store == store.name]
        per_store.append(sql.SQL("(b.store = {} AND (b.dataset IS NULL OR b.dataset IN ({})))").format(
            sql.Literal(store.name), sql.SQL(", ").join(sql.Literal(d) for d in listed)))
    rest = sql.SQL("FROM {} b WHERE b.status = 'committed' AND ({})").format(
        sql.Identifier(platform_schema, "ds_batches"), sql.SQL(" OR ").join(per_store))
    return objects.ensure_view(conn, target.schema, BATCHES, [(c, sql.Identifier("b", c)) for c in BATCH_COLUMNS], rest,
                               barrier=True)


def _dataset_objects(conn: PgConnection, schema: str, layout: DatasetLayout, store: Store,
                     only: set[tuple[str, str]] | None = None) -> bool:
    """The dataset's view(s) and function in a workspace schema. `only`: evolve just these existing ones."""
    changed = False
    current = layout.table
    if only is None or ("view", current) in only:
        cols = objects.view_columns(conn, layout.schema, layout.view)
        changed |= objects.ensure_view(conn, schema, current, [(c, sql.Identifier("c", c)) for c in cols],
                                       sql.SQL("FROM {} c").format(layout.qualified(layout.view)), barrier=True)
    if layout.mode != FORENSIC:
        return changed
    hist = history.history_view(layout)
    if only is None or ("view", hist) in only:
        cols = objects.view_columns(conn, layout.schema, hist)
        changed |= objects.ensure_view(conn, schema, hist, [(c, sql.Identifier("h", c)) for c in cols],
                                       sql.SQL("FROM {} h").format(layout.qualified(hist)), barrier=True)
    function = history.as_of_function(layout)
    if only is None or ("function", function) in only:
        dataset = layout.dataset.name if store.consistency == "single_dataset" else None
        same_stream = sql.SQL("b.dataset IS NULL") if dataset is None else sql.SQL("b.dataset = {}").format(
            sql.Literal(dataset))
        latest = sql.SQL("(SELECT max(b.batch_id) FROM {} b WHERE b.store = {} AND {} AND b.snapshot_at <= $1)"
                         ).format(sql.Identifier(schema, BATCHES), sql.Literal(store.name), same_stream)
        cols = objects.view_columns(conn, schema, current)
        body = sql.SQL("SELECT {cols} FROM {h} h WHERE h.ds_batch_in <= {b} AND (h.ds_batch_out IS NULL OR "
                       "h.ds_batch_out > {b})").format(
            cols=sql.SQL(", ").join(sql.Identifier("h", c) for c in cols), h=sql.Identifier(schema, hist), b=latest)
        changed |= objects.ensure_function(conn, schema, function, ("at", "timestamptz"),
                                           sql.Identifier(schema, current), body)
    return changed


def _wanted_names(target: Target) -> set[tuple[str, str]]:
    names = {("view", BATCHES)}
    for layout in target.layouts:
        names.add(("view", layout.table))
        if layout.mode == FORENSIC:
            names |= {("view", history.history_view(layout)), ("function", history.as_of_function(layout))}
    return names


def _drop(conn: PgConnection, schema: str, items: Iterable[objects.Owned]) -> None:
    """Drop the job's objects, functions first (they read the views); RESTRICT: an object someone built on
    one of them stops the drop with a line naming it, it is never dropped along."""
    for o in sorted(items, key=lambda o: (o.kind != "function", o.name)):
        what = "FUNCTION" if o.kind == "function" else "VIEW"
        try:
            with conn.cursor() as cur:
                cur.execute("SAVEPOINT ds_drop")
                cur.execute(sql.SQL(f"DROP {what} {{}} RESTRICT").format(o.ident(schema)))
                cur.execute("RELEASE SAVEPOINT ds_drop")
        except psycopg2.errors.DependentObjectsStillExist as exc:
            detail = (exc.diag.message_detail or "see the server log").splitlines()[0]
            raise DataSurfaceError(
                f"cannot drop {schema}.{o.name} (no longer in the model): other objects depend on it ({detail}); "
                f"drop or change them first (the job never drops objects it did not create)") from None


# --- grants ---------------------------------------------------------------------------------------------

_ACL_QUERY = """SELECT COALESCE(r.rolname, 'PUBLIC'), a.privilege_type
                  FROM {catalog} o
                  CROSS JOIN LATERAL pg_catalog.aclexplode(o.{acl}) a
                  LEFT JOIN pg_catalog.pg_roles r ON r.oid = a.grantee
                 WHERE o.oid = {oid} AND a.grantee <> o.{owner}"""
_ACL = {  # kind -> catalog, acl column, owner column, the object's oid from its name
    "schema": ("pg_namespace", "nspacl", "nspowner",
               "(SELECT oid FROM pg_catalog.pg_namespace WHERE nspname = %s)"),
    "view": ("pg_class", "relacl", "relowner", "pg_catalog.to_regclass(%s)"),
    "function": ("pg_proc", "proacl", "proowner", "pg_catalog.to_regprocedure(%s)"),
}


def _grantees(conn: PgConnection, kind: str, target: str) -> set[tuple[str, str]]:
    """(grantee, privilege) on an object, its owner left out; PUBLIC for grantee 0."""
    catalog, acl, owner, oid = _ACL[kind]
    query = sql.SQL(_ACL_QUERY).format(catalog=sql.Identifier("pg_catalog", catalog), acl=sql.Identifier(acl),
                                       owner=sql.Identifier(owner), oid=sql.SQL(oid))
    with conn.cursor() as cur:
        cur.execute(query, (target,))
        return {(g, p) for g, p in cur.fetchall()}


def _grant_exactly(conn: PgConnection, kind: str, ident: sql.Composable, privilege: str, role: str | None) -> None:
    """`role` (None: nobody) holds exactly `privilege` on the object, besides its owner."""
    keyword = {"schema": "SCHEMA", "view": "TABLE", "function": "FUNCTION"}[kind]
    by_name = kind == "schema" and isinstance(ident, sql.Identifier)  # a schema is found by its plain name
    have = _grantees(conn, kind, ident.strings[0] if by_name else ident.as_string(conn))  # type: ignore[attr-defined]
    wrong = {g for g, p in have if g != role or p != privilege}
    with conn.cursor() as cur:
        for grantee in sorted(wrong):
            who = sql.SQL("PUBLIC") if grantee == "PUBLIC" else sql.Identifier(grantee)
            cur.execute(sql.SQL(f"REVOKE ALL ON {keyword} {{}} FROM {{}}").format(ident, who))
        if role is not None and (role in wrong or (role, privilege) not in have):
            cur.execute(sql.SQL(f"GRANT {privilege} ON {keyword} {{}} TO {{}}").format(ident, sql.Identifier(role)))


def _grants(conn: PgConnection, schema: str, role: str | None) -> None:
    """Exactly: USAGE on the schema, SELECT on the job's views, EXECUTE on its functions, for `role`."""
    _grant_exactly(conn, "schema", sql.Identifier(schema), "USAGE", role)
    for o in objects.owned(conn, schema).values():
        _grant_exactly(conn, o.kind, o.ident(schema), "SELECT" if o.kind == "view" else "EXECUTE", role)


# --- reconcile (setup) and evolve (merge) ---------------------------------------------------------------

def _schema_comment(conn: PgConnection, schema: str) -> tuple[bool, str | None]:
    with conn.cursor() as cur:
        cur.execute("""SELECT pg_catalog.obj_description(oid, 'pg_namespace') FROM pg_catalog.pg_namespace
                        WHERE nspname = %s""", (schema,))
        row = cur.fetchone()
    return (False, None) if row is None else (True, row[0])


def reconcile(conn: PgConnection, model: Model, platform_schema: str, wanted: list[Target]) -> list[str]:
    """Bring every workspace schema of the platform in line with the model (the caller's transaction);
    returns one line per workspace for the user."""
    lines = []
    for t in wanted:
        exists, comment = _schema_comment(conn, t.schema)
        with conn.cursor() as cur:
            if not exists:
                cur.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(t.schema)))
            if comment is None or (comment.startswith(objects.MARK) and comment != schema_mark(platform_schema)):
                cur.execute(sql.SQL("COMMENT ON SCHEMA {} IS {}").format(
                    sql.Identifier(t.schema), sql.Literal(schema_mark(platform_schema))))
        stores = {s.name: s for s in t.stores}
        _batches_view(conn, t, platform_schema)
        for layout in t.layouts:
            _dataset_objects(conn, t.schema, layout, stores[layout.store])
        keep = _wanted_names(t)
        _drop(conn, t.schema, [o for k, o in objects.owned(conn, t.schema).items() if k not in keep])
        _grants(conn, t.schema, t.workspace.role)
        lines.append(f"{t.schema}: workspace {t.workspace.name}, {len(t.layouts)} dataset(s), role {t.workspace.role}")
    lines += _remove_others(conn, platform_schema, {t.schema for t in wanted})
    return lines


def _remove_others(conn: PgConnection, platform_schema: str, keep: set[str]) -> list[str]:
    """Workspace schemas of this platform that the model no longer has: the job's objects go, and so do all
    grants on the schema; the schema itself goes when nothing else is left in it."""
    with conn.cursor() as cur:
        cur.execute("""SELECT nspname FROM pg_catalog.pg_namespace
                        WHERE pg_catalog.obj_description(oid, 'pg_namespace') = %s ORDER BY 1""",
                    (schema_mark(platform_schema),))
        gone = [r[0] for r in cur.fetchall() if r[0] not in keep]
    lines = []
    for schema in gone:
        _drop(conn, schema, objects.owned(conn, schema).values())
        _grant_exactly(conn, "schema", sql.Identifier(schema), "USAGE", None)
        with conn.cursor() as cur:
            cur.execute("SAVEPOINT ds_drop_schema")
            try:
                cur.execute(sql.SQL("DROP SCHEMA {} RESTRICT").format(sql.Identifier(schema)))
                cur.execute("RELEASE SAVEPOINT ds_drop_schema")
                lines.append(f"{schema}: removed (no longer in the model)")
            except psycopg2.errors.DependentObjectsStillExist:
                cur.execute("ROLLBACK TO SAVEPOINT ds_drop_schema")
                cur.execute(sql.SQL("COMMENT ON SCHEMA {} IS NULL").format(sql.Identifier(schema)))
                lines.append(f"{schema}: the job's objects and grants removed (no longer in the model); the schema "
                             f"is kept for the objects others created in it")
    return lines


def evolve(conn: PgConnection, model: Model, platform_schema: str, store: Store, layouts: list[DatasetLayout]) -> bool:
    """merge: the existing workspace objects of these datasets follow the platform's views (an added column
    appears in them). Creates nothing new and grants nothing: that is setup's."""
    changed = False
    for workspace in of_platform(model, platform_schema):
        exists, comment = _schema_comment(conn, workspace.schema)
        if not exists or comment != schema_mark(platform_schema):
            continue
        mine = set(objects.owned(conn, workspace.schema))
        for layout in layouts:
            if any(d.store == store.name and d.dataset == layout.dataset.name for d in workspace.datasets):
                changed |= _dataset_objects(conn, workspace.schema, layout, store, only=mine)
    return changed
