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
        mdl = load_model(model, model_ref, model_path)
        print(f"ok   model {mdl.origin or model}: {len(mdl.stores)} store(s)")
    except DataSurfaceError as exc:
        raise DataSurfaceError(f"model: {exc}") from exc
    for st in mdl.stores:
        try:
            with sources.open_source(st, "check") as source:
                source.check(st.datasets)
                if st.source.ingestion == "cdc":  # what a merge would refuse; the publication it may create
                    Capture(source.conn, st, "").requirements(st.datasets)  # type: ignore[attr-defined]
            print(f"ok   source of store {st.name}: {sources.describe(st)}")
        except DataSurfaceError as exc:
            print(f"FAIL source of store {st.name}: {exc}")
            failures.append(f"store {st.name}")
    try:
        with connection(merge, merge_credential, "check") as conn, conn.cursor() as cur:
            cur.execute("SELECT 1")
        print(f"ok   merge {merge.describe()}")
    except DataSurfaceError as exc:
        print(f"FAIL merge: {exc}")
        failures.append("merge database")
    if failures:
        raise DataSurfaceError(f"check failed for: {', '.join(failures)}")
