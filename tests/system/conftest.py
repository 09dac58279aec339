"""Fixtures of the system tests: the chart rendered by the real helm and its workloads run as processes by
kubelet.py, on the suite's real PostgreSQL. These tests run in .venv-airflow (scripts/airflow-venv.sh),
whose Airflow and datasurface package stand in for the apache/airflow and job images."""

from __future__ import annotations

import os
import shutil
import sys

import pytest


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    missing = [tool for tool in ("unshare", "nsenter", "mount", "setpriv") if shutil.which(tool) is None]
    reason = None
    if os.geteuid() != 0:
        reason = "kubelet.py needs root (namespaces, mounts, runAsUser)"
    elif missing:
        reason = f"kubelet.py needs {', '.join(missing)} (util-linux)"
    if reason:
        print(f"\n*** SKIPPING tests/system: {reason} ***", file=sys.stderr)
        for item in items:
            item.add_marker(pytest.mark.skip(reason=reason))
