"""Fixtures of the observability tests: the engine tests' world (a source, a model, one committed live
batch) and a running exporter process."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from tests.engine.conftest import PLATFORM, SCHEMA, world  # noqa: F401 - fixture re-exported

__all__ = ["PLATFORM", "SCHEMA", "Exporter", "start_exporter"]


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


@pytest.fixture
def exporter(world: dict[str, Any]) -> Iterator[Exporter]:  # noqa: F811 - the imported fixture
    exp = start_exporter(world["dbs"], [PLATFORM])
    yield exp
    exp.stop()


def wait_for(predicate: Any, timeout: float = 20.0, step: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(step)
