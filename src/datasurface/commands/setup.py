"""`setup`: create or evolve a platform's merge tables, views, workspaces and grants, without ingesting."""

from __future__ import annotations

from datasurface.cdc import slots as cdc_slots
from datasurface.consumers import history as consumers_history
from datasurface.consumers import workspaces
from datasurface.db import Endpoint
from datasurface.engine import ensure_layout, layout_relations
from datasurface.merge import ddl
from datasurface.merge.layout import FORENSIC, check_mode, dataset_layouts, plan_evolution, platform_schema
from datasurface.merge.locks import LockRetry
from datasurface.model import find_store, load_model
from datasurface.observe import runs
from datasurface.sessions import SessionLimits, connection


def run_setup(*, model: str, model_ref: str | None, model_path: str, platform: str, mode: str,
              stores: list[str] | None, merge: Endpoint, merge_credential: str,
              limits: SessionLimits | None = None) -> None:
    limits = limits or SessionLimits()
    schema = platform_schema(platform)
    history = runs.RunHistory(merge, merge_credential, schema, runs.SETUP)
    lines: list[str] = []
    with history.run(stores[0] if stores and len(stores) == 1 else None):
        checked_mode = check_mode(mode)
        loaded = load_model(model, model_ref, model_path)
        chosen = [find_store(loaded, name) for name in stores] if stores else list(loaded.stores)
        layouts = [layout for store in chosen for layout in dataset_layouts(schema, store, checked_mode)]
        for layout in layouts:
            if mode == FORENSIC:
                consumers_history.check_names(layout)
        spaces = workspaces.targets(loaded, schema, layouts, chosen)
        with connection(merge, merge_credential, "merge", limits=limits) as conn:
            for layout in layouts:
                plan_evolution(conn, layout)  # refuse before changing anything
            workspaces.check_roles(conn, spaces)
            conn.rollback()

            def step() -> None:
                ddl.lock(conn, schema)  # setup reconciles grants and workspaces too: always under the lock
                ensure_layout(conn, schema, layouts, chosen)
                lines[:] = workspaces.reconcile(conn, loaded, schema, spaces)
                conn.commit()

            LockRetry(conn, limits).run(f"setting up platform {schema}", step,
                                        lambda: layout_relations(schema, layouts) + workspaces.relations(spaces),
                                        exclusive=True)
            lines += cdc_slots.drop_stale(conn, loaded, schema)
    print(f"{schema}: {len(layouts)} dataset(s) of {len(chosen)} store(s) ready ({mode})")
    for line in lines:
        print(line)
