"""Smoke test of the benchmark's change-data-capture scenarios (scripts/benchmark/cdc.py): a tiny run finishes,
every correctness check passes, and each scenario prints its figures and ratios. No timing assertions."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
# the package as scripts/benchmark.sh runs it: `python -m benchmark` with scripts/ on the path
BENCHMARK = [sys.executable, "-m", "benchmark"]
ENV = {**os.environ, "PYTHONPATH": str(REPO / "scripts")}


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess[str], list[dict[str, Any]]]:
    js = tmp_path_factory.mktemp("cdcbench") / "results.json"
    proc = subprocess.run(
        [*BENCHMARK, "--shapes", "", "--fixed-cost", "2", "--cdc",
         "--cdc-sizes", "3k", "--cdc-churn", "10,1,0", "--cdc-repeat", "2", "--cdc-idle", "2", "--cdc-big", "2k",
         "--cdc-profile",
         "--json", str(js)],
        capture_output=True, text=True, timeout=600, cwd=REPO, env=ENV)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc, json.loads(js.read_text())


def test_every_cdc_batch_is_checked_and_has_its_floor(run: tuple[subprocess.CompletedProcess[str], Any]) -> None:
    proc, results = run
    assert "CORRECTNESS CHECK FAILED" not in proc.stderr
    cdc = [r for r in results if r["shape"] == "cdc"]
    snap = [r for r in results if r["shape"] == "snap"]
    assert [(r["nominal"], r["churn"]) for r in cdc] == [  # two batches of each level with changes
        (3000, "load"), (3000, "10%"), (3000, "10%"), (3000, "1%"), (3000, "1%"), (3000, "0%"), (2000, "load"),
        (2000, "all, 1 tx")]
    # the snapshot batch of the same table after the last batch of each level
    assert [(r["nominal"], r["churn"]) for r in snap] == [(3000, "10%"), (3000, "1%"), (3000, "0%")]
    assert [r["batch"] for r in cdc[1:5]] == [2, 3, 4, 5]
    assert all(r["check"] == "ok" and r["job_s"] > 0 and r["rss_mb"] > 0 for r in cdc + snap)
    by = {(r["nominal"], r["churn"]): r for r in cdc}  # a level's last batch
    assert by[(3000, "0%")]["changes"] == 0 and by[(3000, "0%")]["batch"] == 7  # two no-change runs: 6 and 7
    assert by[(2000, "all, 1 tx")]["changes"] == 2000
    for key in ((3000, "10%"), (3000, "1%"), (2000, "all, 1 tx")):
        r, t = by[key], by[key]["table"]
        assert r["changes"] > 0 and r["floor_s"] > 0
        assert t["messages"] >= r["changes"]  # the floor decoded at least one message per changed row
        assert 0 < t["decode_s"] and 0 < t["copy_s"] and t["decode_s"] + t["copy_s"] <= r["floor_s"]
        assert t["changes_per_s"] == pytest.approx(r["changes"] / r["job_s"]) and t["job_cpu_s"] > 0
    for key in ((3000, "10%"), (3000, "1%")):  # against a snapshot batch of the same table and churn
        r, t = by[key], by[key]["table"]
        assert r["floor_w_s"] >= r["floor_s"] * 0.5 and t["speed_up"] == pytest.approx(t["snapshot_s"] / r["job_s"])
    assert "speed_up" not in by[(2000, "all, 1 tx")]["table"]
    # --cdc-profile: the servers' durations of the job's statements, by phase
    for key in ((3000, "1%"), (2000, "all, 1 tx")):
        t = by[key]["table"]
        assert t["profile: read: peek + decode + send (source COPY TO)"][1] == 1
        assert t["profile: stage: COPY into the change table (merge)"][1] == 1
        assert t["profile: diff (with the net per key)"][1] >= 1 and t["profile: apply"][1] >= 1
        assert t["profile: net per key (scan of the change table; ds_net when it is made)"][1] >= 1


def test_each_scenario_prints_its_ratios(run: tuple[subprocess.CompletedProcess[str], Any]) -> None:
    proc, results = run
    lines = proc.stdout.splitlines()
    by = {(r["nominal"], r["churn"]): r for r in results if r["shape"] == "cdc"}

    def line(head: str) -> str:
        return next(x for x in lines if x.startswith(head))

    runs = [r for r in results if r["shape"] == "cdc" and r["churn"] == "1%"]
    churn = runs[-1]
    text = [x for x in lines if x.startswith("# cdc 3k 1% live: ")][-1]  # the last batch's: with the snapshot's
    assert f"ratio w {churn['ratio_w']:.2f}" in text and f"{churn['table']['speed_up']:.1f}x faster" in text
    assert f"{churn['table']['changes_per_s']:,.0f} changes/s" in text
    # the batch ratio: the job less its fixed cost (measured in the same run) against floor+w; the whole job's beside
    t = churn["table"]
    assert t["fixed_s"] > 0 and t["batch_s"] == pytest.approx(churn["job_s"] - t["fixed_s"])
    assert t["batch_ratio_w"] == pytest.approx(t["batch_s"] / churn["floor_w_s"])
    assert f"batch ratio w {t['batch_ratio_w']:.2f} = (job {churn['job_s']:.2f}s - the job's fixed cost " in text
    # the level's verdict: on the medians of its batches
    ratios = sorted(r["table"]["batch_ratio_w"] for r in runs)
    median = sum(ratios) / 2
    text = line("# cdc 3k 1% live, 2 batch(es): ")
    assert f"batch ratio w median {median:.2f} ({ratios[0]:.2f}-{ratios[1]:.2f})" in text
    assert text.endswith(f"(target batch ratio w <= 1.5: {'met' if median <= 1.5 else 'MISSED'})")
    text = [x for x in lines if x.startswith("# cdc profile 3k 1% live (the last run): wall ")][-1]
    phases = {k[len("profile: "):]: v for k, v in churn["table"].items() if k.startswith("profile: ")}
    assert len(phases) == 7 and all(f"{label} {secs:.3f}s ({n})" in text for label, (secs, n) in phases.items())
    idle = by[(3000, "0%")]
    text = line("# cdc 3k 0% live: ")
    assert f"no-change batch {idle['job_s'] * 1000:.0f} ms (median of 2 runs" in text
    t = idle["table"]
    assert t["budget_s"] == pytest.approx(t["fixed_s"] + t["round_trip_s"]) and t["fixed_s"] > 0
    assert t["budget_ratio"] == pytest.approx(idle["job_s"] / t["budget_s"])
    assert f"{idle['table']['budget_ratio']:.2f}x (target <= 1)" in text
    assert f"{t['job_cpu_s'] * 1000:.0f} against {t['fixed_cpu_s'] * 1000:.0f} ms" in text and t["fixed_cpu_s"] > 0
    fixed = next(r for r in results if r["shape"] == "fixed")
    assert f"process start to first query: {fixed['job_s'] * 1000:.0f} ms" in text
    big = by[(2000, "all, 1 tx")]
    assert f"peak RSS {big['rss_mb']:.0f} MB;" in line("# cdc 2k all, 1 tx live: ")
    text = line("# cdc 2k all, 1 tx live, 1 batch(es): ")
    assert f"; ratio {big['ratio']:.2f}; peak RSS {big['rss_mb']:.0f} MB (target < 250 MB: " in text


@contextmanager
def loaded(pg_server: object, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tag: str,
           rows: int) -> Iterator[tuple[Any, Path]]:
    """A CdcBench (source and merge on the test server) whose narrow table the cdc job has loaded."""
    monkeypatch.syspath_prepend(str(REPO / "scripts"))
    bench = importlib.import_module("benchmark.cdc").CdcBench(pg_server, tmp_path)
    bench.create_databases(tag)
    try:
        bench.generate("narrow", rows)
        model = bench.write_model("narrow")
        bench.run_job(model, "live")  # the slot's first batch: a snapshot
        yield bench, model
    finally:
        bench.drop_databases()


def test_the_floor_counts_exactly_the_churn(pg_server: object, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """The floor decodes a copy of the job's slot and finds every net change the churn made (and the check
    fails while the cdc job has not merged them)."""
    with loaded(pg_server, tmp_path, monkeypatch, "cdcfloor", 600) as (bench, model):
        check_failed = importlib.import_module("benchmark.bench").CheckFailed

        expected = bench.churn_keys(0.3, seed=1)
        changes = expected["inserted"] + expected["updated"] + expected["deleted"]
        assert expected["updated"] > 0 and expected["deleted"] > 0 and expected["inserted"] > 0
        _, found = bench.floor("narrow", "live")
        assert found == changes
        assert bench.messages >= changes and bench.floor_writes("narrow", "live") > 0
        with pytest.raises(check_failed, match="current view != source"):
            bench.check("narrow", "live", expected, found, None)
        bench.run_job(model, "live")
        bench.check("narrow", "live", expected, found, None)


def test_a_small_change_batch_reads_the_merge_table_by_key(pg_server: object, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """1% of a 200k-row table changed: the batch's diff and writes probe the merge table's key index; they
    never scan the whole table (a scan costs what the snapshot costs, whatever the number of changes)."""
    with loaded(pg_server, tmp_path, monkeypatch, "cdcscan", 200_000) as (bench, model):
        with bench.conn("merge") as c, c.cursor() as cur:
            cur.execute('ANALYZE "bench_live"."bench_narrow"')
            c.commit()
        expected = bench.churn_keys(0.01, seed=1)

        def scans() -> int:
            with bench.conn("merge") as c, c.cursor() as cur:
                cur.execute("SELECT seq_scan FROM pg_stat_user_tables WHERE relid = "
                            "'\"bench_live\".\"bench_narrow\"'::regclass")
                return int(cur.fetchone()[0])

        before = scans()
        bench.run_job(model, "live")  # the backend's counters reach the statistics when its session ends
        assert scans() == before
        bench.check("narrow", "live", expected, expected["inserted"] + expected["updated"] + expected["deleted"],
                    None)


def test_the_cdc_options_are_in_the_help() -> None:
    """scripts/benchmark.sh --help lists the cdc options (they reach the parser the run uses); an unknown
    --cdc-modes is refused before anything starts."""
    proc = subprocess.run(["bash", str(REPO / "scripts" / "benchmark.sh"), "--help"], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    for option in ("--cdc", "--cdc-sizes", "--cdc-churn", "--cdc-repeat", "--cdc-idle", "--cdc-big", "--cdc-modes",
                   "--cdc-profile"):
        assert f"  {option} " in proc.stdout or f"  {option}\n" in proc.stdout, proc.stdout
    wrong = subprocess.run(["bash", str(REPO / "scripts" / "benchmark.sh"), "--cdc", "--cdc-modes", "live,nope"],
                           capture_output=True, text=True, timeout=120)
    assert wrong.returncode == 2 and "unknown mode 'nope'" in wrong.stderr, wrong.stderr
