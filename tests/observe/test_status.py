"""`datasurface-job status`: per stream freshness, the last batch, the last failure; fits 80 columns."""

from __future__ import annotations

from typing import Any

from tests.support.engine import PLATFORM, assert_one_line_error, merge_args, run_job


def status(world: dict[str, Any], *extra: str) -> Any:
    dbs = world["dbs"]
    return run_job(["status", "--platform", PLATFORM, *dbs.merge_args(), *extra], dbs.env,
                   {"COLUMNS": "80", "TERM": "dumb"})


def test_status_shows_freshness_counts_and_the_last_failure_in_80_columns(world: dict[str, Any]) -> None:
    dbs = world["dbs"]
    failed = run_job(merge_args(world["model"], PLATFORM, "live", dbs), {**dbs.env, "SOURCE_PASSWORD": "wrong"})
    assert failed.returncode == 1
    proc = status(world)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    print(proc.stdout)
    assert all(len(line) <= 80 for line in lines), max(lines, key=len)
    text = proc.stdout
    assert "Yellow: 1 stream(s)" in text
    row = next(line for line in lines if line.lstrip().startswith("Store1 "))
    cells = row.split()
    assert cells[:2] == ["Store1", "1"]  # the last committed batch
    assert cells[2].endswith("s")  # its age, e.g. 3s
    assert "failing: 1 run(s)" in " ".join(text.split())
    reason = failed.stderr.strip().splitlines()[-1].removeprefix("datasurface-job: ")
    assert "Store1 last failed" in text
    assert " ".join(reason.split()) in " ".join(text.split())  # the whole reason, however it wraps
    assert "last 10 batches" in text
    header = [line.split() for line in lines[lines.index(next(x for x in lines if "last 10 batches" in x)):]][2]
    assert header == ["stream", "batch", "status", "started", "secs", "total", "+ins", "~upd", "-del"]


def test_status_after_a_success_is_ok_and_keeps_its_options(world: dict[str, Any]) -> None:
    dbs = world["dbs"]
    assert run_job(merge_args(world["model"], PLATFORM, "live", dbs), dbs.env).returncode == 0
    proc = status(world, "--store", "Store1", "--limit", "1")
    assert proc.returncode == 0, proc.stderr
    assert "ok" in proc.stdout.split()
    assert "last 1 batches" in proc.stdout
    assert sum(1 for line in proc.stdout.splitlines() if line.lstrip().startswith("Store1 ")) == 2  # stream + 1 batch
    none = status(world, "--store", "Other", "--limit", "0")
    assert "0 stream(s)" in none.stdout


def test_status_of_a_platform_without_a_ledger_says_so(world: dict[str, Any]) -> None:
    dbs = world["dbs"]
    proc = run_job(["status", "--platform", "Nothing", *dbs.merge_args()], dbs.env)
    assert_one_line_error(proc, "schema nothing has no batch ledger yet")
