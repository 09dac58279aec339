"""The throwaway server's log, read as the benchmark's clock and witness: when a process sent its first
statement, which lock waits passed 100 ms, how often autovacuum ran."""

from __future__ import annotations

import re
import time

from psycopg2 import sql

from datasurface.localpg import LocalPostgres

LOG_PREFIX = "%n [%p] %a: "  # epoch seconds with milliseconds, backend pid, application name
LOG_LINE = re.compile(r"^(\d+\.\d{3}) \[\d+\] (.*?): (LOG|ERROR|FATAL|WARNING):  (.*)$")

LogLine = tuple[float, str, str, str]  # (epoch, application, level, message)


def configure_server_log(server: LocalPostgres) -> None:
    """Every lock wait longer than 100 ms is logged (log_lock_waits reports a wait once it passes
    deadlock_timeout), so is every run of autovacuum, and log lines carry a millisecond timestamp and the
    application name."""
    conn = server.admin_connect()
    with conn.cursor() as cur:
        for name, value in (("log_line_prefix", LOG_PREFIX), ("log_lock_waits", "on"),
                            ("deadlock_timeout", "100ms"), ("log_autovacuum_min_duration", "0")):
            cur.execute(sql.SQL("ALTER SYSTEM SET {} = %s").format(sql.Identifier(name)), (value,))
        cur.execute("SELECT pg_reload_conf()")
    conn.close()
    time.sleep(0.2)


class ServerLog:
    def __init__(self, server: LocalPostgres):
        self.path = server.data_dir.parent / "server.log"
        self.offset = self.path.stat().st_size

    def new_lines(self) -> list[LogLine]:
        """The lines written since the last call."""
        with open(self.path, errors="replace") as log:
            log.seek(self.offset)
            text = log.read()
            self.offset = log.tell()
        lines = []
        for line in text.splitlines():
            match = LOG_LINE.match(line)
            if match:
                lines.append((float(match.group(1)), match.group(2), match.group(3), match.group(4)))
        return lines


def first_statement(lines: list[LogLine], application_prefix: str) -> float:
    return min(at for at, application, _, message in lines
               if application.startswith(application_prefix) and message.startswith("statement: "))


def lock_waits(lines: list[LogLine]) -> tuple[list[str], float]:
    """The lock waits longer than deadlock_timeout (100 ms) that the server logged (one "still waiting"
    line each), and the longest of them that ended ("acquired ... after N ms"), in milliseconds."""
    waits = [message for _, _, _, message in lines if "still waiting for" in message]
    ended = [float(match.group(1)) for _, _, _, message in lines
             if (match := re.search(r" acquired .* after ([\d.]+) ms", message))]
    return waits, max(ended, default=0.0)


def autovacuum_runs(lines: list[LogLine]) -> int:
    return sum(1 for *_, message in lines if message.startswith(("automatic vacuum", "automatic analyze")))


def set_statement_logging(server: LocalPostgres, role: str, on: bool) -> None:
    conn = server.admin_connect()
    with conn.cursor() as cur:
        if on:
            cur.execute(sql.SQL("ALTER ROLE {} SET log_statement = 'all'").format(sql.Identifier(role)))
        else:
            cur.execute(sql.SQL("ALTER ROLE {} RESET log_statement").format(sql.Identifier(role)))
    conn.close()
