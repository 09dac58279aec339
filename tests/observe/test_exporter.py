"""`datasurface-job exporter` (docs/monitoring.md): metric names, types and labels exactly as the table; the
database down or hung gives datasurface_up 0 within the scrape bound and 1 again when it returns;
/healthz; SIGTERM stops it at once."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import suppress
from typing import Any

import pytest

from tests.support.engine import PLATFORM, SMALL, create_source_tables, merge_args, model_dict, run_job, write_model
from tests.support.exporter import Exporter, scrape, start_exporter, value, wait_for

STREAM = {"platform": PLATFORM, "store": "Store1", "dataset": ""}


def test_metrics_are_exactly_the_documented_table(world: dict[str, Any], exporter: Exporter) -> None:
    dbs = world["dbs"]
    failed = run_job(merge_args(world["model"], PLATFORM, "live", dbs), {**dbs.env, "SOURCE_PASSWORD": "wrong"})
    assert failed.returncode == 1
    with world["mrg"].cursor() as cur:
        cur.execute("""SELECT extract(epoch FROM finished_at), extract(epoch FROM finished_at - started_at),
                              rows_total, rows_inserted, rows_updated, rows_deleted FROM yellow.ds_batches""")
        finished, duration, *counts = (float(v) for v in cur.fetchone())
    world["mrg"].rollback()
    fams = scrape(exporter)
    types = {name: fam[0] for name, fam in fams.items() if name.startswith("datasurface_")}
    assert types == {
        "datasurface_up": "gauge",
        "datasurface_last_commit_timestamp_seconds": "gauge",
        "datasurface_snapshot_age_seconds": "gauge",
        "datasurface_batch_duration_seconds": "gauge",
        "datasurface_batch_rows": "gauge",
        "datasurface_runs": "counter",  # exposed as datasurface_runs_total
        "datasurface_open_batch_age_seconds": "gauge",
        "datasurface_last_batch_id": "gauge",
        "datasurface_consecutive_failed_runs": "gauge",
        "datasurface_scrape_duration_seconds": "gauge",
    }
    assert fams["datasurface_up"][1] == {frozenset({"platform": PLATFORM}.items()): 1.0}
    assert value(fams, "datasurface_last_commit_timestamp_seconds", **STREAM) == pytest.approx(finished)
    assert 0 <= value(fams, "datasurface_snapshot_age_seconds", **STREAM) < 120
    assert value(fams, "datasurface_batch_duration_seconds", **STREAM) == pytest.approx(duration)
    for op, n in zip(("total", "inserted", "updated", "deleted"), counts, strict=True):
        assert value(fams, "datasurface_batch_rows", **STREAM, op=op) == n
    runs = fams["datasurface_runs"][1]
    assert {dict(k)["result"]: v for k, v in runs.items()} == {"ok": 1.0, "recovered": 0.0, "failed": 1.0}
    assert all(dict(k).keys() == {"platform", "store", "dataset", "result"} for k in runs)
    assert value(fams, "datasurface_open_batch_age_seconds", **STREAM) == 0
    assert value(fams, "datasurface_consecutive_failed_runs", **STREAM) == 1
    assert "datasurface_runs_total{" in exporter.get("/metrics")[1]
    assert exporter.get("/healthz") == (200, "ok\n")
    assert exporter.get("/nope")[0] == 404
    assert run_job(merge_args(world["model"], PLATFORM, "live", dbs), dbs.env).returncode == 0
    fams = scrape(exporter)
    assert value(fams, "datasurface_consecutive_failed_runs", **STREAM) == 0  # a success resets it
    assert {dict(k)["result"]: v for k, v in fams["datasurface_runs"][1].items()} == \
        {"ok": 2.0, "recovered": 0.0, "failed": 1.0}


def test_an_open_batch_and_a_recovery_show(world: dict[str, Any], exporter: Exporter) -> None:
    dbs = world["dbs"]
    killed = run_job(merge_args(world["model"], PLATFORM, "live", dbs), dbs.env,
                     {"DATASURFACE_TEST_KILL_AT": "after_ingest"})
    assert killed.returncode == -9
    time.sleep(1.1)
    fams = scrape(exporter)
    assert value(fams, "datasurface_open_batch_age_seconds", **STREAM) >= 1
    assert value(fams, "datasurface_last_batch_id", **STREAM) == 1
    assert run_job(merge_args(world["model"], PLATFORM, "live", dbs), dbs.env).returncode == 10
    fams = scrape(exporter)
    assert value(fams, "datasurface_open_batch_age_seconds", **STREAM) == 0
    assert value(fams, "datasurface_last_batch_id", **STREAM) == 2
    runs = {dict(k)["result"]: v for k, v in fams["datasurface_runs"][1].items()}
    assert runs == {"ok": 1.0, "recovered": 1.0, "failed": 0.0}  # the killed run counts as nothing


def test_a_multi_platform_exporter_labels_each_platform_as_given(world: dict[str, Any]) -> None:
    dbs = world["dbs"]
    exp = start_exporter(dbs, [PLATFORM, "NotYet"])
    try:
        fams = scrape(exp)
        assert fams["datasurface_up"][1] == {frozenset({"platform": p}.items()): 1.0 for p in (PLATFORM, "NotYet")}
        assert {dict(k)["platform"] for k in fams["datasurface_last_commit_timestamp_seconds"][1]} == {PLATFORM}
    finally:
        exp.stop()


@pytest.fixture
def own_server(databases_on: Any, tmp_path: Any) -> Iterator[tuple[Any, Any]]:
    """A PostgreSQL of the test's own, to stop and freeze, with one committed batch."""
    from datasurface.localpg import LocalPostgres, find_bin_dir

    with LocalPostgres(find_bin_dir("any")) as server:
        dbs = databases_on(server)
        src = dbs.connect(dbs.source)
        create_source_tables(src, SMALL)
        src.close()
        model = write_model(tmp_path / "model", model_dict(dbs.host, dbs.port, dbs.source, datasets=SMALL))
        assert run_job(merge_args(model, PLATFORM, "live", dbs), dbs.env).returncode == 0
        yield server, dbs


def _up(exp: Exporter) -> float:
    return value(scrape(exp), "datasurface_up", platform=PLATFORM)


def _timed_up(exp: Exporter) -> tuple[float, float]:
    t0 = time.monotonic()
    up = _up(exp)
    return up, time.monotonic() - t0


def test_database_down_gives_up_0_at_once_and_back_to_1(own_server: tuple[Any, Any]) -> None:
    server, dbs = own_server
    exp = start_exporter(dbs, [PLATFORM], "--scrape-timeout", "3")
    try:
        assert _up(exp) == 1
        server.stop_server_only()
        up, took = _timed_up(exp)
        assert (up, took < 3) == (0, True), took
        server.start_server_only()
        assert wait_for(lambda: _up(exp) == 1)
        assert "datasurface_last_commit_timestamp_seconds{" in exp.get("/metrics")[1]
    finally:
        exp.stop()


def _server_pids(server: Any) -> list[int]:
    main = int((server.data_dir / "postmaster.pid").read_text().split()[0])
    children = subprocess.run(["pgrep", "-P", str(main)], capture_output=True, text=True).stdout.split()
    return [main, *map(int, children)]


def test_a_hung_database_never_hangs_a_scrape(own_server: tuple[Any, Any]) -> None:
    """Every server process frozen (SIGSTOP): the open connection and new ones get no answer at all."""
    server, dbs = own_server
    exp = start_exporter(dbs, [PLATFORM], "--scrape-timeout", "2")
    pids = _server_pids(server)
    try:
        assert _up(exp) == 1
        pids = _server_pids(server)
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
        up, took = _timed_up(exp)
        assert up == 0 and 1.5 < took < 4, took
        up, took = _timed_up(exp)  # the stuck read is still pending: answered at once
        assert up == 0 and took < 1, took
        assert exp.get("/healthz", timeout=2) == (200, "ok\n")
        for pid in pids:
            os.kill(pid, signal.SIGCONT)
        assert wait_for(lambda: _up(exp) == 1, timeout=30)
    finally:
        for pid in pids:
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        exp.stop()


def test_sigterm_stops_the_exporter_at_once(world: dict[str, Any], exporter: Exporter) -> None:
    assert exporter.get("/healthz")[0] == 200
    t0 = time.monotonic()
    exporter.proc.send_signal(signal.SIGTERM)
    assert exporter.proc.wait(5) == 0
    assert time.monotonic() - t0 < 1.5
    assert exporter.proc.stdout is not None
    assert "stopped (SIGTERM)" in exporter.proc.stdout.read()
