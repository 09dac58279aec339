"""Fixtures of the engine tests: a source with data, a model and one committed live batch."""

from __future__ import annotations

import random
import subprocess
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.engine.support import (
    DATASETS,
    create_source_tables,
    load_snapshot,
    merge_args,
    model_dict,
    next_snapshot,
    run_job,
    write_model,
)

PLATFORM, SCHEMA = "Yellow", "yellow"
SMALL = {"pairs": DATASETS["pairs"]}


@pytest.fixture
def world(dbs: Any, tmp_path: Path) -> Iterator[dict[str, Any]]:
    """A source with data, a model and one committed batch (live) in the merge database."""
    yield from _world(dbs, tmp_path)


@pytest.fixture(params=[15, 18], ids=["pg15", "pg18"])
def world_each(request: pytest.FixtureRequest, pg_servers: dict[int, Any], databases_on: Any,
               tmp_path: Path) -> Iterator[dict[str, Any]]:
    """`world` on PostgreSQL 15 and on 18 (the live-cluster behaviours depend on server features)."""
    if request.param not in pg_servers:
        pytest.skip(f"PostgreSQL {request.param} is not available here")
    yield from _world(databases_on(pg_servers[request.param]), tmp_path)


def on_every_version() -> Any:
    """For a module: `world = on_every_version()` runs its `world` tests on PostgreSQL 15 and on 18."""

    @pytest.fixture
    def world(world_each: dict[str, Any]) -> dict[str, Any]:
        return world_each

    return world


def _world(dbs: Any, tmp_path: Path) -> Iterator[dict[str, Any]]:
    src = dbs.connect(dbs.source)
    create_source_tables(src, SMALL)
    rng = random.Random(5)
    snap = next_snapshot(rng, {}, defaultdict(set))
    load_snapshot(src, {"pairs": snap["pairs"]})
    model_doc = model_dict(dbs.host, dbs.port, dbs.source, datasets=SMALL)
    model = write_model(tmp_path / "model", model_doc)
    first = run_job(merge_args(model, PLATFORM, "live", dbs), dbs.env)
    assert first.returncode == 0, first.stderr
    mrg = dbs.connect(dbs.merge)
    yield {"dbs": dbs, "src": src, "mrg": mrg, "model": model, "doc": model_doc, "tmp": tmp_path}
    src.close()
    mrg.close()


def assert_one_line_error(proc: subprocess.CompletedProcess[str], *fragments: str, code: int = 1) -> None:
    assert proc.returncode == code, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("datasurface-job: error: "), proc.stderr
    for f in fragments:
        assert f in last, last
    assert proc.stdout.strip().splitlines()[-1] == f"DATASURFACE_RESULT_CODE={code}"
