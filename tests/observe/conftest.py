"""Fixtures of the observability tests: the engine tests' world (a source, a model, one committed live
batch) and a running exporter process."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.engine import PLATFORM, first_live_batch
from tests.support.exporter import Exporter, start_exporter


@pytest.fixture
def world(dbs: Any, tmp_path: Path) -> Iterator[dict[str, Any]]:
    """A source with data, a model and one committed batch (live) in the merge database."""
    yield from first_live_batch(dbs, tmp_path)


@pytest.fixture
def exporter(world: dict[str, Any]) -> Iterator[Exporter]:
    exp = start_exporter(world["dbs"], [PLATFORM])
    yield exp
    exp.stop()


