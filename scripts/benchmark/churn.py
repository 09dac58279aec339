"""The main scenario: per shape and size, a load batch, then one batch per churn level (`--churn`,
`--repeat`, `--history`), each merged by the job, measured against its floors and checked."""

from __future__ import annotations

import os
import statistics
from pathlib import Path

from .bench import Bench, CheckFailed
from .history import as_of_report, table_stats
from .report import Result, churn_label, emit, human


def run_churn_levels(bench: Bench, shape: str, size: int, modes: list[str], churns: list[float], history: int,
                     as_of: bool = False) -> list[Result]:
    """The batches of one shape and size, live and/or forensic; raises CheckFailed on a wrong answer (after
    printing the failing row)."""
    bench.create_databases(f"{shape}_{size}_{os.getpid()}")
    results: list[Result] = []
    try:
        model = bench.prepare(shape, size, shape)
        versions = dict.fromkeys(modes, 0)
        batch = dict.fromkeys(modes, 0)
        expected = {"total": size, "inserted": size, "updated": 0, "deleted": 0}
        steps: list[float | None] = [None, *churns]  # None: the initial load
        if history:
            steps += [0.01] * max(0, history - len(steps))
        for step, fraction in enumerate(steps):
            if fraction is not None:
                expected = bench.churn(shape, fraction, seed=step)
            shown = step <= len(churns) or step == len(steps) - 1 or step % 10 == 0
            for mode in modes:
                batch[mode] += 1
                versions[mode] += expected["inserted"] + expected["updated"]
                result, floor_changes = run_batch(bench, model, shape, size, mode, batch[mode], fraction, expected,
                                                  shown)
                check_row(bench, result, shape, expected, floor_changes, versions[mode])
                if fraction is None and not bench.floor_on_load:
                    result.floor_s = float("nan")  # no merge table yet: the first batch is the initial load
                result.shown = shown
                if history and mode == "forensic" and (batch[mode] == 2 or step == len(steps) - 1):
                    result.table = table_stats(bench, shape, mode, batch[mode])
                if result.shown:
                    emit(result)
                results.append(result)
        if as_of and "forensic" in modes:
            as_of_report(bench, shape, batch["forensic"])
    finally:
        bench.drop_databases()
    return results


def check_row(bench: Bench, result: Result, shape: str, expected: dict[str, int], floor_changes: int,
              versions: int) -> None:
    """`Bench.check` of the batch of `result` (`versions`: the forensic table's row versions); a failure
    prints the row, marked FAIL, before CheckFailed goes on."""
    try:
        bench.check(shape, result.mode, expected, floor_changes, versions if result.mode == "forensic" else None)
    except CheckFailed:
        result.check = "FAIL"
        emit(result)
        raise


def run_batch(bench: Bench, model: Path, shape: str, size: int, mode: str, batch: int, fraction: float | None,
              expected: dict[str, int], shown: bool) -> tuple[Result, int]:
    """One batch: its floor (and, for a shown churn row, the floor with the writes), then the job; the row
    and the number of changes the floor's diff found."""
    floor_s, floor_changes = (bench.floor(shape, mode) if fraction is not None or bench.floor_on_load
                              else (0.0, size))
    floor_w = float("nan")
    if fraction is not None and shown and bench.writes_floor:  # a copy of the merge table: shown rows only
        floor_w = bench.copy_s + bench.floor_writes(shape, mode)
    bench.settle()
    job_s, rss = bench.run_job(model, mode)
    if fraction is None and (load_writes := bench.load_writes(shape, mode)) is not None:
        floor_w = floor_s + load_writes  # the load's second floor
    result = Result(bench.label(shape), size, expected["total"], churn_label(fraction), mode, batch, floor_s, job_s,
                    rss, expected["inserted"] + expected["updated"] + expected["deleted"], floor_w_s=floor_w)
    return result, floor_changes


def print_medians(results: list[Result]) -> None:
    """`--repeat`: per shape, size, churn level and mode, the medians of its batches (one batch's ratio swings
    by 10-20% on a shared machine; the small tables' most)."""
    groups: dict[tuple[str, int, str, str], list[Result]] = {}
    for result in results:
        if result.churn != "load" and result.shape != "fixed":
            groups.setdefault((result.shape, result.nominal, result.churn, result.mode), []).append(result)
    for (shape, size, churn, mode), group in groups.items():
        ratios, ratios_w = [r.ratio for r in group], [r.ratio_w for r in group]
        print(f"# median of {len(group)} batches: {shape} {human(size)} {churn} {mode}: floor "
              f"{statistics.median(r.floor_s for r in group):.3f}s, "
              f"job {statistics.median(r.job_s for r in group):.3f}s, "
              f"ratio {statistics.median(ratios):.2f} (range {min(ratios):.2f}-{max(ratios):.2f}), ratio w "
              f"{statistics.median(ratios_w):.2f} (range {min(ratios_w):.2f}-{max(ratios_w):.2f})", flush=True)
