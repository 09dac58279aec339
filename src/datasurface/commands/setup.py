"""`setup`: create or evolve a platform's merge tables, views, workspaces and grants, without ingesting."""

from __future__ import annotations

from datasurface.cdc import slots as cdc_slots
from datasurface.consumers import history as consumers_history
from datasurface.consumers import workspaces
from datasurface.db import Endpoint
from datasurface.engine import ensure_layout, layout_relations
from datasurface.merge import ddl, layout
from datasurface.merge.locks import LockRetry
from datasurface.model import find_store, load_model
from datasurface.observe import runs
from datasurface.sessions import SessionLimits, connection


def run_setup(*, model: str, model_ref: str | None, model_path: str, platform: str, mode: str,
              stores: list[str] | None, merge: Endpoint, merge_credential: str,
              limits: SessionLimits | None = None) -> None:
    limits = limits or SessionLimits()
    schema = layout.platform_schema(platform)
    history = runs.RunHistory(merge, merge_credential, schema, runs.SETUP)
    lines: list[str] = []
    with history.run(stores[0] if stores and len(stores) == 1 else None):
        layout.check_mode(mode)
        mdl = load_model(model, model_ref, model_path)
        chosen = [find_store(mdl, s) for s in stores] if stores else list(mdl.stores)
        lays = [lay for st in chosen for lay in layout.layouts(schema, st, mode)]
        for lay in lays:
            if mode == layout.FORENSIC:
                consumers_history.check_names(lay)
        spaces = workspaces.targets(mdl, schema, lays, chosen)
        with connection(merge, merge_credential, "merge", limits=limits) as conn:
            for lay in lays:
                layout.plan_evolution(conn, lay)  # refuse before changing anything
            workspaces.check_roles(conn, spaces)
            conn.rollback()

            def step() -> None:
                ddl.lock(conn, schema)  # setup reconciles grants and workspaces too: always under the lock
                ensure_layout(conn, schema, lays, chosen)
                lines[:] = workspaces.reconcile(conn, mdl, schema, spaces)
                conn.commit()

            LockRetry(conn, limits).run(f"setting up platform {schema}", step,
                                        lambda: layout_relations(schema, lays) + workspaces.relations(spaces),
                                        exclusive=True)
            lines += cdc_slots.drop_stale(conn, mdl, schema)
    print(f"{schema}: {len(lays)} dataset(s) of {len(chosen)} store(s) ready ({mode})")
    for line in lines:
        print(line)
