"""A run opens its sessions ahead of need (sessions.Ahead): the merge database's three (heartbeat, merge,
history) while it reads the model, the source's while it checks the merge side. Errors stay where they
were, and a session the run never took is closed."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg2
import pytest

from datasurface.db import Endpoint
from datasurface.engine import run_merge
from datasurface.errors import DatabaseError
from datasurface.sessions import Ahead, SessionLimits, _session, connection
from tests.support.engine import PLATFORM, SCHEMA, merge_args


def _sessions(conn: Any, run_id: str | None = None) -> dict[str, int]:
    """application_name -> pid of the job's sessions on conn's database (of one run, if given)."""
    with conn.cursor() as cur:
        cur.execute("SELECT application_name, pid FROM pg_stat_activity WHERE datname = current_database() "
                    "AND application_name LIKE 'datasurface-job %%' AND application_name LIKE %s",
                    (f"% {run_id}" if run_id else "%",))
        found = dict(cur.fetchall())
    conn.rollback()
    return found


def _wait_for(what: str, probe: Any, timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = probe()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _paused_run(world: dict[str, Any], point: str) -> subprocess.Popen[str]:
    dbs = world["dbs"]
    args = merge_args(world["model"], PLATFORM, "live", dbs)
    return subprocess.Popen([sys.executable, "-m", "datasurface.cli", *args],
                            env={**os.environ, **dbs.env, "DATASURFACE_TEST_PAUSE_AT": f"{point}=2"},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_merge_sessions_open_while_the_model_is_read(world: dict[str, Any]) -> None:
    mrg = world["mrg"]
    with mrg.cursor() as cur:
        cur.execute(f"SELECT count(*) FROM {SCHEMA}.ds_runs")
        runs_before = cur.fetchone()[0]
    mrg.rollback()
    proc = _paused_run(world, "model:loaded")
    try:
        roles = {"heartbeat", "merge", "history"}
        found = _wait_for("the run's three merge-database sessions",
                          lambda: (s := _sessions(mrg)) and {n.split(" ")[1] for n in s} >= roles and s)
        assert len({n.split(" ")[2] for n in found}) == 1, found  # one run's
        assert proc.poll() is None, "the run must still be paused after reading its model"
        with mrg.cursor() as cur:  # opened, nothing written: the history row comes with the stream
            cur.execute(f"SELECT count(*) FROM {SCHEMA}.ds_runs")
            assert cur.fetchone()[0] == runs_before
        mrg.rollback()
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 0, err
    assert "batch 2:" in out


def test_source_session_opens_while_the_merge_side_is_checked(world: dict[str, Any]) -> None:
    src = world["src"]
    proc = _paused_run(world, "batch:preflight")
    try:
        found = _wait_for("the run's source session",
                          lambda: {n: p for n, p in _sessions(src).items() if n.split(" ")[1] == "source"})
        assert proc.poll() is None, "the run must still be paused after its checks of the merge side"
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 0, err
    assert len(found) == 1


def test_sessions_a_failed_run_never_took_are_closed(world: dict[str, Any], monkeypatch: pytest.MonkeyPatch,
                                                     tmp_path: Path) -> None:
    dbs, mrg = world["dbs"], world["mrg"]
    for k, v in dbs.env.items():
        monkeypatch.setenv(k, v)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "datasurface.yaml").write_text("stores: [\n")  # does not parse
    run_id = "0a1b2c3d"
    with pytest.raises(Exception, match=r"datasurface\.yaml"):
        run_merge(model=str(tmp_path / "bad"), model_ref=None, model_path="datasurface.yaml", platform=PLATFORM,
                  mode="live", store="Store1", merge=Endpoint(dbs.host, dbs.port, dbs.merge),
                  merge_credential="merge", run_id=run_id)
    # the history session recorded the failure and was closed; the heartbeat and merge sessions, opened
    # ahead and never taken, are closed too (without waiting for them, should a server not answer)
    _wait_for("no session of the failed run", lambda: not _sessions(mrg, run_id))
    with mrg.cursor() as cur:
        cur.execute(f"SELECT exit_status, error FROM {SCHEMA}.ds_runs WHERE run = %s", (run_id,))
        (status, error), = cur.fetchall()
    mrg.rollback()
    assert status == 1 and "datasurface.yaml" in error


def test_an_error_opening_ahead_is_raised_where_the_session_is_taken(dbs: Any,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BAD_USER", dbs.env["MERGE_USER"])
    monkeypatch.setenv("BAD_PASSWORD", "not-the-password")
    endpoint, limits = Endpoint(dbs.host, dbs.port, dbs.merge), SessionLimits()
    with pytest.raises(DatabaseError) as direct, connection(endpoint, "bad", "merge", "00000001", limits):
        pass
    ahead = Ahead()
    ahead.session(endpoint, "bad", "merge", "00000002", limits)  # fails in its thread; nothing raised here
    with pytest.raises(DatabaseError) as taken, connection(endpoint, "bad", "merge", "00000002", limits, ahead=ahead):
        pass
    assert str(taken.value) == str(direct.value)
    assert "password authentication failed" in str(taken.value)
    assert "not-the-password" not in str(taken.value)
    ahead.close()


def _idle_after_settings(conn: Any, pid: int) -> bool:
    with conn.cursor() as cur:
        cur.execute("SELECT state = 'idle' AND query LIKE 'SELECT set_config(%%' FROM pg_stat_activity WHERE pid = %s",
                    (pid,))
        row = cur.fetchone()
    return bool(row and row[0])


@pytest.fixture
def opening(dbs: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Ahead, Endpoint, Any]]:
    """A merge session of run 0000000a opening ahead, and a connection of the same role to watch it."""
    for k, v in dbs.env.items():
        monkeypatch.setenv(k, v)
    endpoint = Endpoint(dbs.host, dbs.port, dbs.merge)
    ahead = Ahead()
    ahead.session(endpoint, "merge", "merge", "0000000a", SessionLimits())
    watcher = dbs.connect(dbs.merge)
    watcher.autocommit = True
    yield ahead, endpoint, watcher
    ahead.close()
    watcher.close()


def test_a_session_is_taken_only_by_the_same_arguments(opening: tuple[Ahead, Endpoint, Any]) -> None:
    ahead, endpoint, watcher = opening
    limits = SessionLimits()
    opened = _wait_for("the session opened ahead", lambda: _sessions(watcher, "0000000a"))
    with connection(endpoint, "merge", "heartbeat", "0000000a", limits, ahead=ahead) as other:
        assert other.info.backend_pid not in opened.values()  # another role: a session of its own
    with connection(endpoint, "merge", "merge", "0000000a", limits, ahead=ahead) as conn:
        assert conn.info.backend_pid == opened["datasurface-job merge 0000000a"]
        with conn.cursor() as cur:
            cur.execute("SHOW lock_timeout")
            assert cur.fetchone()[0] == "500ms"  # the session's limits are in force
    _wait_for("no session left", lambda: not _sessions(watcher, "0000000a"))


def test_a_session_the_server_ended_while_it_waited_is_opened_again(opening: tuple[Ahead, Endpoint, Any]) -> None:
    """A model that is slow to come (a large git clone) can keep a session opened ahead idle past the server's
    idle_session_timeout: the run then gets a fresh session, not a dead one."""
    ahead, endpoint, watcher = opening
    opened = _wait_for("the session opened ahead", lambda: _sessions(watcher, "0000000a"))
    pid = opened["datasurface-job merge 0000000a"]
    _wait_for("its settings done", lambda: _idle_after_settings(watcher, pid))
    with watcher.cursor() as cur:
        cur.execute("SELECT pg_terminate_backend(%s)", (pid,))
    _wait_for("the session to end", lambda: not _sessions(watcher, "0000000a"))
    with connection(endpoint, "merge", "merge", "0000000a", SessionLimits(), ahead=ahead) as conn:
        assert conn.info.backend_pid != pid
        with conn.cursor() as cur:
            cur.execute("SELECT 1")
            assert cur.fetchone() == (1,)


def test_a_session_the_server_ended_while_it_was_opening_is_opened_again(dbs: Any,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Connected, then ended by the server before its settings statement ran (a terminated backend, a
    restart): the run gets a fresh session, as for one ended while idle; a refused one stays an error."""
    for k, v in dbs.env.items():
        monkeypatch.setenv(k, v)
    endpoint = Endpoint(dbs.host, dbs.port, dbs.merge)
    key, opener = _session(endpoint, "merge", "merge", "0000000b", SessionLimits())
    ended: list[int] = []

    def ended_while_opening() -> Any:
        conn = dbs.connect(dbs.merge)
        ended.append(conn.info.backend_pid)
        with dbs.connect(dbs.merge) as killer, killer.cursor() as cur:
            cur.execute("SELECT pg_terminate_backend(%s)", (conn.info.backend_pid,))
        killer.close()
        conn.cursor().execute("SELECT 1")  # what the settings statement meets: the server closed the connection
        raise AssertionError("the terminated session still answered")

    ahead = Ahead()
    ahead.open(key, ended_while_opening)
    conn = ahead.take(key, opener)
    try:
        assert ended and conn.info.backend_pid != ended[0]
        with conn.cursor() as cur:
            cur.execute("SHOW lock_timeout")
            assert cur.fetchone()[0] == "500ms"
    finally:
        conn.close()

    def refused() -> Any:
        raise psycopg2.OperationalError('FATAL:  password authentication failed for user "x"')

    ahead.open(key, refused)
    with pytest.raises(psycopg2.OperationalError, match="password authentication failed"):
        ahead.take(key, opener)
