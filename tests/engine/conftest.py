"""Fixtures of the engine tests: a source with data, a model and one committed live batch."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.engine import first_live_batch


@pytest.fixture
def world(dbs: Any, tmp_path: Path) -> Iterator[dict[str, Any]]:
    """A source with data, a model and one committed batch (live) in the merge database."""
    yield from first_live_batch(dbs, tmp_path)


@pytest.fixture(params=[15, 18], ids=["pg15", "pg18"])
def world_each(request: pytest.FixtureRequest, pg_servers: dict[int, Any], databases_on: Any,
               tmp_path: Path) -> Iterator[dict[str, Any]]:
    """`world` on PostgreSQL 15 and on 18 (the live-cluster behaviours depend on server features)."""
    if request.param not in pg_servers:
        pytest.skip(f"PostgreSQL {request.param} is not available here")
    yield from first_live_batch(databases_on(pg_servers[request.param]), tmp_path)


