"""`check`: can the job reach the model, every store's source and the merge database."""

from __future__ import annotations

from datasurface.cdc.capture import Capture
from datasurface.db import Endpoint
from datasurface.errors import DataSurfaceError
from datasurface.ingest import sources
from datasurface.model import load_model
from datasurface.sessions import connection


def run_check(*, model: str, model_ref: str | None, model_path: str, merge: Endpoint,
              merge_credential: str) -> None:
    """Connectivity to model, every source and the merge database; one line each; fails if any fails."""
    failures = []
    try:
        loaded = load_model(model, model_ref, model_path)
        print(f"ok   model {loaded.origin or model}: {len(loaded.stores)} store(s)")
    except DataSurfaceError as exc:
        raise DataSurfaceError(f"model: {exc}") from exc
    for store in loaded.stores:
        try:
            with sources.open_source(store, "check") as source:
                source.check(store.datasets)
                if store.source.ingestion == "cdc":  # what a merge would refuse; the publication it may create
                    Capture(source.conn, store, "").requirements(store.datasets)  # type: ignore[attr-defined]
            print(f"ok   source of store {store.name}: {sources.describe(store)}")
        except DataSurfaceError as exc:
            print(f"FAIL source of store {store.name}: {exc}")
            failures.append(f"store {store.name}")
    try:
        with connection(merge, merge_credential, "check") as conn, conn.cursor() as cur:
            cur.execute("SELECT 1")
        print(f"ok   merge {merge.describe()}")
    except DataSurfaceError as exc:
        print(f"FAIL merge: {exc}")
        failures.append("merge database")
    if failures:
        raise DataSurfaceError(f"check failed for: {', '.join(failures)}")
