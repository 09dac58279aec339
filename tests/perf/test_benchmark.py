"""Smoke test of the benchmark (scripts/benchmark/, run by scripts/benchmark.sh): a tiny run finishes,
every correctness check passes and the table has its columns. No timing assertions: the numbers themselves
are for the docs, not CI."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
# the package as scripts/benchmark.sh runs it: `python -m benchmark` with scripts/ on the path
BENCHMARK = [sys.executable, "-m", "benchmark"]
ENV = {**os.environ, "PYTHONPATH": str(REPO / "scripts")}
COLUMNS = ["shape", "rows", "churn", "mode", "batch", "floor s", "job s", "ratio", "floor+w s", "ratio w",
           "rows/s", "peak RSS MB", "changes", "check"]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess[str], Path, Path]:
    out = tmp_path_factory.mktemp("bench")
    md, js = out / "table.md", out / "results.json"
    proc = subprocess.run(
        [*BENCHMARK, "--sizes", "2k", "--wide-sizes", "1k",
         "--churn", "10,0", "--as-of", "--fixed-cost", "2", "--streams", "2", "--stream-rows", "500",
         "--jobs", "1,2", "--stream-rounds", "2", "--markdown", str(md), "--json", str(js)],
        capture_output=True, text=True, timeout=300, cwd=REPO, env=ENV,
    )
    return proc, md, js


def test_benchmark_runs_and_checks_pass(run: tuple[subprocess.CompletedProcess[str], Path, Path]) -> None:
    proc, _, js = run
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "CORRECTNESS CHECK FAILED" not in proc.stderr
    everything = json.loads(js.read_text())
    streams = [r["streams"] for r in everything if "streams" in r]
    results = [r for r in everything if "streams" not in r and r["shape"] != "fixed"]
    # the fixed cost: process start -> first query, the job's and its floor's, from the server log
    (fixed,) = [r for r in everything if r.get("shape") == "fixed"]
    assert 0 < fixed["floor_s"] < 30 and 0 < fixed["job_s"] < 30 and fixed["batch"] == 2
    # narrow and wide, live and forensic, a load batch plus one batch per churn level
    assert {(r["shape"], r["mode"]) for r in results} == {(s, m) for s in ("narrow", "wide")
                                                          for m in ("live", "forensic")}
    assert len(results) == 2 * 2 * 3
    assert all(r["check"] == "ok" for r in results)
    by = {(r["shape"], r["mode"], r["churn"]): r for r in results}
    assert by[("narrow", "live", "load")]["changes"] == 2000
    assert by[("narrow", "live", "0%")]["changes"] == 0
    assert by[("narrow", "forensic", "10%")]["changes"] > 0
    for r in results:
        assert r["job_s"] > 0 and r["rss_mb"] > 0
        if r["churn"] != "load":
            assert r["floor_s"] > 0
            assert r["floor_w_s"] > r["floor_s"] * 0.5  # COPY + diff + the minimal writes
    # many streams: per mode, the load round, then two 1% rounds per K (forwards, then backwards), every
    # store merged and checked; then the median per K
    rounds = [s for s in streams if s["round"] != "median"]
    assert [(s["mode"], s["jobs"], s["load"]) for s in rounds] == [
        (m, k, load) for m in ("live", "forensic")
        for k, load in ((2, True), (1, False), (2, False), (2, False), (1, False))]
    assert all(s["batches"] == 2 and s["per_min"] > 0 and s["p95_s"] >= s["p50_s"] > 0 for s in rounds)
    medians = [s for s in streams if s["round"] == "median"]
    assert [(s["mode"], s["jobs"]) for s in medians] == [(m, k) for m in ("live", "forensic") for k in (1, 2)]
    for s in medians:
        mine = [r["per_min"] for r in rounds if (r["mode"], r["jobs"], r["load"]) == (s["mode"], s["jobs"], False)]
        assert s["per_min"] == pytest.approx(statistics.median(mine)) and s["batches"] == 4
    assert [s["speed_up"] for s in medians if s["jobs"] == 1] == [1.0, 1.0]
    assert all(isinstance(s["lock_waits"], int) and isinstance(s["autovacuum"], int) for s in streams)
    assert all(s["job_cpu_ms"] > 0 and s["other_cpu_ms"] > -50 for s in streams)  # /proc/stat ticks: 10 ms


def test_benchmark_prints_the_table(run: tuple[subprocess.CompletedProcess[str], Path, Path]) -> None:
    proc, md, _ = run
    header = proc.stdout.splitlines()[0].split()
    assert " ".join(header) == " ".join(COLUMNS)
    rows = [line for line in proc.stdout.splitlines()[1:] if line.strip() and not line.startswith("#")]
    assert len(rows) == 13  # the fixed-cost row and 12 batches
    assert all(line.split()[-1] == "ok" for line in rows)
    table = md.read_text().splitlines()
    assert table[0] == "| " + " | ".join(COLUMNS) + " |"
    assert len(table) == 2 + 13


def test_benchmark_shows_the_as_of_plans(run: tuple[subprocess.CompletedProcess[str], Path, Path]) -> None:
    proc, _, _ = run
    for label in ("floor: count(*) of _current", "count(*) of as_of(at), all rows", "as_of(at) WHERE id = key",
                  "as_of_batch(mid) WHERE id = key", "_history WHERE id = key"):
        assert f"# {label}: " in proc.stderr, proc.stderr
    key_query = proc.stderr.split("# as_of(at) WHERE id = key: ", 1)[1].split("\n# as_of_batch", 1)[0]
    assert "Index Scan using bench_narrow_pkey" in key_query and "Execution Time" in key_query, key_query


def test_benchmark_fails_on_a_wrong_answer(pg_server: object, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """The correctness check can fail: a job that commits nothing must not pass as fast."""
    monkeypatch.syspath_prepend(str(REPO / "scripts"))
    bench_module = importlib.import_module("benchmark.bench")

    bench = bench_module.Bench(pg_server, tmp_path)
    bench.create_databases("wrong")
    try:
        bench.generate("narrow", 500)
        model = bench.write_model("narrow")
        bench.run_job(model, "live")
        bench.check("narrow", "live", {"total": 500, "inserted": 500, "updated": 0, "deleted": 0}, 500, None)
        expected = bench.churn("narrow", 0.3, seed=1)
        # the churn is not merged: the current view still shows the old rows
        with pytest.raises(bench_module.CheckFailed, match="current view != source"):
            bench.check("narrow", "live", expected, floor_changes=expected["inserted"] + expected["updated"]
                        + expected["deleted"], versions=None)
    finally:
        bench.drop_databases()


def test_repeat_gives_each_churn_level_its_medians(tmp_path: Path) -> None:
    """`--repeat 3`: three batches of each churn level in a row, each after fresh churn and checked, then
    one line per level and mode with the medians of its three batches."""
    js = tmp_path / "results.json"
    proc = subprocess.run(
        [*BENCHMARK, "--sizes", "1k", "--shapes", "narrow",
         "--churn", "10", "--repeat", "3", "--fixed-cost", "0", "--json", str(js)],
        capture_output=True, text=True, timeout=300, cwd=REPO, env=ENV)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    results = [r for r in json.loads(js.read_text()) if r.get("churn") == "10%"]
    for mode in ("live", "forensic"):
        mine = [r for r in results if r["mode"] == mode]
        assert [r["batch"] for r in mine] == [2, 3, 4] and all(r["check"] == "ok" for r in mine)
        assert all(r["changes"] > 0 for r in mine)  # each batch merged fresh churn
        head = f"# median of 3 batches: narrow 1k 10% {mode}:"
        line = next(x for x in proc.stdout.splitlines() if x.startswith(head))
        ratios = sorted(r["ratio"] for r in mine)
        assert f"ratio {statistics.median(ratios):.2f} (range {ratios[0]:.2f}-{ratios[-1]:.2f})" in line, line


@pytest.mark.parametrize("module", ["benchmark.cli", "benchmark.exporter"])
def test_every_option_is_explained(module: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """`--help` of the benchmark and of `--exporter` says what every option does."""
    monkeypatch.syspath_prepend(str(REPO / "scripts"))
    parser = importlib.import_module(module).build_parser()
    options = [a for a in parser._actions if a.option_strings and a.dest != "help"]
    assert options
    unexplained = [a.option_strings[0] for a in options if not a.help or a.help == argparse.SUPPRESS]
    assert unexplained == []


@pytest.mark.parametrize("args", [["--help"], ["--exporter", "--help"]])
def test_the_wrapper_runs_the_package(args: list[str]) -> None:
    """scripts/benchmark.sh reaches the package: its usage line, and an unknown option refused."""
    proc = subprocess.run(["bash", str(REPO / "scripts" / "benchmark.sh"), *args], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    prog = "scripts/benchmark.sh --exporter" if args[0] == "--exporter" else "scripts/benchmark.sh"
    assert proc.stdout.startswith(f"usage: {prog} [-h]"), proc.stdout
    wrong = subprocess.run(["bash", str(REPO / "scripts" / "benchmark.sh"), *args[:-1], "--no-such-option"],
                           capture_output=True, text=True, timeout=120)
    assert wrong.returncode == 2 and "unrecognized arguments: --no-such-option" in wrong.stderr, wrong.stderr
