"""Smoke test of the benchmark's MariaDB rows (`--mysql-sizes`): a tiny run finishes and every check passes.
No timing assertions: the numbers are for the docs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from datasurface.localmysql import find_server

REPO = Path(__file__).resolve().parents[2]


def test_benchmark_mysql_rows(tmp_path: Path) -> None:
    if find_server() is None:
        pytest.skip("SKIPPED LOUDLY: no MariaDB server binary (install Debian's mariadb-server)")
    out = tmp_path / "results.json"
    proc = subprocess.run([sys.executable, "-m", "benchmark", "--no-postgres", "--mysql-sizes",
                           "2k", "--modes", "live", "--churn", "10", "--json", str(out)],
                          capture_output=True, text=True, timeout=300, cwd=REPO,
                          env={**os.environ, "PYTHONPATH": str(REPO / "scripts")})  # as scripts/benchmark.sh
    assert proc.returncode == 0, proc.stdout + proc.stderr
    results = json.loads(out.read_text())
    assert [(r["shape"], r["churn"], r["check"]) for r in results] == [("mysql-narrow", "load", "ok"),
                                                                      ("mysql-narrow", "10%", "ok")]
    assert all(r["floor_s"] > 0 and r["rss_mb"] > 0 for r in results)
    assert results[0]["changes"] == 2000 and results[1]["changes"] > 0
