"""`--fixed-cost N`: what every batch pays before its first query (process start, imports, model, sessions),
the job's against its floor's (an interpreter that imports psycopg2, connects and runs one query)."""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time

from .bench import Bench, CheckFailed
from .report import Result, emit
from .serverlog import ServerLog, first_statement, set_statement_logging

FLOOR_START = """import os, psycopg2
c = psycopg2.connect(host=os.environ['H'], port=os.environ['P'], dbname=os.environ['D'],
                     user=os.environ['MERGE_USER'], password=os.environ['MERGE_PASSWORD'], application_name='floor')
c.cursor().execute('SELECT 1')
"""


def run_fixed_cost(bench: Bench, runs: int) -> list[Result]:
    """Process start -> the first statement the merge server receives, for `datasurface-job merge` (a 1k-row
    table with no changes) and for its floor (the interpreter, `import psycopg2`, one connection, one query),
    each timed by the server log's millisecond clock against the moment the process was started. The job
    opens its sessions while it imports the engine and reads the model (sessions.Ahead), so its first
    statement is a session's settings; the time to its first statement of the batch's own work (taking
    the stream lock) is reported beside it."""
    bench.create_databases(f"fixed_{os.getpid()}")
    try:
        bench.generate("narrow", 1000)
        model = bench.write_model("narrow")
        bench.run_job(model, "live")
        log = ServerLog(bench.server)
        set_statement_logging(bench.server, bench.env["MERGE_USER"], True)
        job, work, floor, rss, job_cpu, floor_cpu = [], [], [], [], [], []
        env = {**os.environ, **bench.env, "H": bench.server.socket_dir, "P": str(bench.server.port),
               "D": bench.merge_db}
        for _ in range(runs):
            log.new_lines()
            _, peak = bench.run_job(model, "live")
            lines = log.new_lines()
            job.append(first_statement(lines, "datasurface-job") - bench.spawned_at)
            work.append(min(at for at, application, _, message in lines
                            if application.startswith("datasurface-job merge")
                            and "pg_try_advisory_lock" in message) - bench.spawned_at)
            rss.append(peak)
            job_cpu.append(bench.cpu_s)
            started = time.time()
            proc = subprocess.Popen([sys.executable, "-c", FLOOR_START], env=env)
            _, status, usage = os.wait4(proc.pid, 0)
            if os.waitstatus_to_exitcode(status) != 0:
                raise CheckFailed("the fixed-cost floor failed")
            floor.append(first_statement(log.new_lines(), "floor") - started)
            floor_cpu.append(usage.ru_utime + usage.ru_stime)
        set_statement_logging(bench.server, bench.env["MERGE_USER"], False)
        result = Result("fixed", 1000, 1000, "0%", "live", runs, statistics.median(floor), statistics.median(job),
                        max(rss), 0)
        result.table = {"job_min": min(job), "job_max": max(job), "floor_min": min(floor),
                        "floor_max": max(floor), "job_cpu": statistics.median(job_cpu),
                        "floor_cpu": statistics.median(floor_cpu), "stream_lock": statistics.median(work)}
        emit(result)
        print(f"# fixed cost (process start -> first query), {runs} runs: job median {result.job_s * 1000:.0f} ms "
              f"(range {min(job) * 1000:.0f}-{max(job) * 1000:.0f}), floor median {result.floor_s * 1000:.0f} ms "
              f"(range {min(floor) * 1000:.0f}-{max(floor) * 1000:.0f}); the job's first statement of the batch "
              f"(the stream lock) at {statistics.median(work) * 1000:.0f} ms (range {min(work) * 1000:.0f}-"
              f"{max(work) * 1000:.0f}); CPU of the whole process (user + system, "
              f"the least a busy machine distorts): job {statistics.median(job_cpu) * 1000:.0f} ms for its whole "
              f"batch, floor {statistics.median(floor_cpu) * 1000:.0f} ms")
    finally:
        bench.drop_databases()
    return [result]
