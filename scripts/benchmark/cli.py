"""Benchmark `datasurface-job merge` against the physical floor.

The floor, measured in the same run on the same snapshot: COPY of the source table (binary, through an
OS pipe, like the job) into an UNLOGGED table in the merge database, plus ONE `FULL JOIN` diff of it
against the current rows. The job is `datasurface-job merge` run as a subprocess, end to end (process
start, model load, source check, ledger, staging, diff, apply, commit); its peak RSS comes from the
kernel (wait4 rusage of that child).

It starts its own throwaway PostgreSQL (one server, with a source and a merge database, as the test
suite does), generates the source tables server-side with `generate_series`, applies churn server-side
(a mixed batch: one third inserts, one third updates, one third deletes) and checks every run:
the `_current` view equals the source table (count + order-independent row hash), the ledger's counts
equal the churn applied, and the floor's diff found the same number of changes.

    scripts/benchmark.sh                                         # default: about a minute on 2 cores
    scripts/benchmark.sh --sizes 1m --wide-sizes 1m --churn 10,1,0  # wide at 1M, 10% churn
    scripts/benchmark.sh --sizes 10m --shapes narrow --churn 1,0    # 10M rows
    scripts/benchmark.sh --sizes 1m --shapes narrow --modes forensic --churn 1 --history 50
    scripts/benchmark.sh --sizes 1m --shapes narrow --modes forensic --churn 1 --history 50 --as-of
    scripts/benchmark.sh --fixed-cost 0 --sizes 1k --shapes narrow --churn 0 --streams 50 --stream-rounds 3

`--as-of` (forensic): after the last batch, the consumer queries on that history, each with its plan
(EXPLAIN ANALYZE) and time: as_of(timestamptz) of the middle batch's snapshot (all rows, and one key),
as_of_batch, one key's `_history`, against the floor of counting the `_current` view.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from datasurface.localpg import LocalPostgres, find_bin_dir

from . import cdc
from .bench import Bench, CheckFailed
from .churn import print_medians, run_churn_levels
from .fixed_cost import run_fixed_cost
from .groups import run_groups
from .history import print_history
from .mysql import run_mysql
from .report import COLUMNS, Result, markdown_table, parse_size, plain_row
from .serverlog import configure_server_log
from .shapes import NARROW, SHAPES
from .streams import run_streams

REPO = Path(__file__).resolve().parents[2]
MODES = ("live", "forensic")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="scripts/benchmark.sh", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="100k,1m", help="row counts, comma-separated (k, m suffixes); e.g. 10m")
    parser.add_argument("--shapes", default="narrow,wide", help="narrow (6 columns) and/or wide (33 columns)")
    parser.add_argument("--wide-sizes", default="100k",
                        help="sizes for the wide shape (default 100k only; e.g. 100k,1m)")
    parser.add_argument("--modes", default="live,forensic", help="live and/or forensic")
    parser.add_argument("--churn", default="1,0", help="churn per batch in percent, comma-separated; e.g. 1,0,10")
    parser.add_argument("--repeat", type=int, default=1, metavar="N",
                        help="run each churn level's batch N times in a row (fresh churn before each, the floor "
                             "measured before each), then print the median ratios of each level (e.g. 5)")
    parser.add_argument("--history", type=int, default=0,
                        help="forensic-after-N-batches: run N batches in total at 1%% churn and report batch N "
                             "next to the first 1%% batch (e.g. 50)")
    parser.add_argument("--mysql-sizes", default="",
                        help="also run the narrow shape from a MariaDB source table of these sizes (e.g. 1m); "
                             "needs Debian's mariadb-server. Its floor: the fastest plain read of the table "
                             "through the same driver into a PostgreSQL COPY (plus the diff, for churn batches)")
    parser.add_argument("--no-postgres", action="store_true", help="skip the PostgreSQL-source scenarios")
    parser.add_argument("--as-of", action="store_true",
                        help="forensic: after the last batch, show plan and time of the as-of and history queries")
    parser.add_argument("--fixed-cost", type=int, default=9, metavar="N",
                        help="runs of the fixed-cost row: process start -> first query, job against its floor "
                             "(median of N; 0: skip)")
    parser.add_argument("--streams", type=int, default=0, metavar="N",
                        help="many-streams mode: N stores x 2 datasets, merged by K concurrent jobs (see --jobs)")
    parser.add_argument("--jobs", default="1,2,4", help="K values for --streams, comma-separated")
    parser.add_argument("--stream-rows", default="20k", help="rows per dataset for --streams")
    parser.add_argument("--stream-rounds", type=int, default=1, metavar="R",
                        help="--streams: R rounds per K, in turn forwards and backwards (1,2,4,4,2,1,...), then "
                             "the median per K and the speed-up of the medians (e.g. 3)")
    parser.add_argument("--groups", type=int, default=0, metavar="N",
                        help="also N small stores merged by one job against one job per store (groups.py)")
    parser.add_argument("--group-rows", type=int, default=100, help="rows of each store's table for --groups")
    parser.add_argument("--group-parallel", default="1,2", help="--parallel values for --groups, comma-separated")
    parser.add_argument("--group-sample", type=int, default=40, metavar="M",
                        help="stores merged by separate processes for --groups (per-stream medians)")
    parser.add_argument("--markdown", type=Path, help="also write the table as Markdown to this file")
    parser.add_argument("--json", type=Path, help="also write the results as JSON to this file")
    cdc.add_arguments(parser)
    return parser


def comma_list(text: str) -> list[str]:
    return [item for item in text.split(",") if item]


@dataclass
class Plan:
    """What to run, from the options."""

    sizes: list[int]
    wide_sizes: list[int]
    mysql_sizes: list[int]
    shapes: list[str]
    modes: list[str]
    churns: list[float]  # fractions, each repeated --repeat times

    def sizes_of(self, shape: str) -> list[int]:
        return self.wide_sizes if shape == "wide" else self.sizes


def plan(parser: argparse.ArgumentParser, args: argparse.Namespace) -> Plan:
    postgres = not args.no_postgres
    result = Plan(sizes=[parse_size(s) for s in comma_list(args.sizes) if postgres],
                  wide_sizes=[parse_size(s) for s in comma_list(args.wide_sizes) if postgres],
                  mysql_sizes=[parse_size(s) for s in comma_list(args.mysql_sizes)],
                  shapes=comma_list(args.shapes), modes=comma_list(args.modes),
                  churns=[float(c) / 100 for c in comma_list(args.churn) for _ in range(args.repeat)])
    for shape in result.shapes:
        if shape not in SHAPES:
            parser.error(f"unknown shape {shape!r}")
    for mode in result.modes + comma_list(args.cdc_modes):
        if mode not in MODES:
            parser.error(f"unknown mode {mode!r}")
    return result


def run_scenarios(server: LocalPostgres, workdir: Path, args: argparse.Namespace, what: Plan,
                  results: list[Result], streams: list[dict[str, Any]]) -> bool:
    """Every scenario the options ask for, in turn; True when a correctness check failed."""
    failed = False
    bench = Bench(server, workdir)
    if args.fixed_cost and not args.no_postgres:  # the PostgreSQL path's fixed cost
        results += run_fixed_cost(bench, args.fixed_cost)
    for shape in what.shapes:
        for size in what.sizes_of(shape):
            try:
                results += run_churn_levels(bench, shape, size, what.modes, what.churns, args.history, args.as_of)
            except CheckFailed as exc:
                print(f"CORRECTNESS CHECK FAILED: {exc}", file=sys.stderr)
                failed = True
    if what.mysql_sizes:
        failed |= run_mysql(server, workdir, what.mysql_sizes, what.modes, what.churns, results)
    if args.streams:
        try:
            streams += run_streams(bench, args.streams, parse_size(args.stream_rows),
                                   [int(k) for k in comma_list(args.jobs)], what.modes, args.stream_rounds)
        except CheckFailed as exc:
            print(f"CORRECTNESS CHECK FAILED: {exc}", file=sys.stderr)
            failed = True
    if args.cdc:
        failed |= cdc.run(server, workdir, args, results)
    if args.groups:
        try:
            streams += [{"groups": row} for row in run_groups(
                bench, args.groups, args.group_rows, [int(k) for k in comma_list(args.group_parallel)],
                min(args.group_sample, args.groups), NARROW)]
        except RuntimeError as exc:
            print(f"CORRECTNESS CHECK FAILED: {exc}", file=sys.stderr)
            failed = True
    return failed


def write_outputs(args: argparse.Namespace, results: list[Result], streams: list[dict[str, Any]]) -> None:
    if args.markdown:
        args.markdown.write_text(markdown_table([r for r in results if r.shown]) + "\n")
    if args.json:
        args.json.write_text(json.dumps([r.__dict__ | {"ratio": r.ratio, "ratio_w": r.ratio_w,
                                                       "rows_per_s": r.rows_per_s} for r in results]
                                        + [{"streams": r} for r in streams], indent=1, default=str))


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    what = plan(parser, args)

    # the job's bytecode, compiled once (PYTHONDONTWRITEBYTECODE=1 would otherwise make every job of an
    # editable install compile its modules from source at start; the image ships none: about 0.1 s a start)
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(REPO / "src")], check=True,
                   stdout=subprocess.DEVNULL)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop the server (finally below) on SIGTERM too
    workdir = Path(tempfile.mkdtemp(prefix="ds-bench-"))
    server = LocalPostgres(find_bin_dir()).start()  # its own temp folder, readable by the server user
    print(f"# PostgreSQL {server.version} at {server.socket_dir} (one server: source and merge databases)",
          file=sys.stderr)
    configure_server_log(server)
    print(plain_row(COLUMNS), flush=True)
    results: list[Result] = []
    streams: list[dict[str, Any]] = []
    try:
        failed = run_scenarios(server, workdir, args, what, results, streams)
    finally:
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    if args.history:
        for shape in what.shapes:
            for size in what.sizes_of(shape):
                print_history(results, shape, size)
    if args.repeat > 1:
        print_medians(results)
    write_outputs(args, results, streams)
    return 1 if failed else 0
