"""The metrics exporter as a process of the tests' own, one scrape read into families, and a wait for a
condition."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

from prometheus_client.parser import text_string_to_metric_families


@dataclass
class Exporter:
    proc: subprocess.Popen[str]
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def get(self, path: str, timeout: float = 30) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(self.url + path, timeout=timeout) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def start_exporter(dbs: Any, platforms: list[str], *extra: str) -> Exporter:
    args = [sys.executable, "-m", "datasurface.cli", "exporter", "--address", "127.0.0.1", "--port", "0",
            *dbs.merge_args(), *extra]
    for p in platforms:
        args += ["--platform", p]
    proc = subprocess.Popen(args, env={**os.environ, **dbs.env}, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    m = re.search(r"http://[^:]+:(\d+)/metrics", line)
    assert m, line
    return Exporter(proc, int(m.group(1)))


def wait_for(predicate: Any, timeout: float = 20.0, step: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(step)


def scrape(exp: Exporter, timeout: float = 30) -> dict[str, Any]:
    """{family name: (type, {frozenset(labels): value})} of one scrape."""
    status, text = exp.get("/metrics", timeout)
    assert status == 200
    families = {}
    for fam in text_string_to_metric_families(text):
        families[fam.name] = (fam.type, {frozenset(s.labels.items()): s.value for s in fam.samples})
    return families


def value(families: dict[str, Any], name: str, **labels: str) -> float:
    return families[name][1][frozenset(labels.items())]  # type: ignore[no-any-return]
