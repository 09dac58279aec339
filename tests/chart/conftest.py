"""Chart test fixtures: the real helm binary, one rendering per values set (cached for the session)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.support.helm import render_chart


@pytest.fixture(scope="session")
def render() -> Callable[..., list[dict[str, Any]]]:
    """render(values=None, values_file=None) -> docs; each distinct input is rendered once per session."""
    cache: dict[str, list[dict[str, Any]]] = {}

    def _render(values: dict[str, Any] | None = None, values_file: Path | None = None) -> list[dict[str, Any]]:
        key = json.dumps([values, str(values_file)], sort_keys=True)
        if key not in cache:
            cache[key] = render_chart(values, values_files=[values_file] if values_file else ())
        return cache[key]

    return _render


@pytest.fixture(scope="session")
def defaults(render: Callable[..., list[dict[str, Any]]]) -> list[dict[str, Any]]:
    return render()
