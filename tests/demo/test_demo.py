"""The local demo end to end: its reported batches and counts agree with what is in the databases,
it leaves nothing running (also on Ctrl-C), and `scripts/demo.sh` (the README's first command) works."""

from __future__ import annotations

import io
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg2
import pytest
from rich.console import Console

from datasurface import demo
from datasurface.demo import DemoResult, DemoServer, execute_demo

pytestmark = pytest.mark.timeout(180)

FOREVER = 2147483647


def _connect(endpoint: Any, cred: Any):  # type: ignore[no-untyped-def]
    return psycopg2.connect(host=endpoint.host, port=endpoint.port, dbname=endpoint.database, user=cred.user,
                            password=cred.password)


def _rows(conn, query: str, *args: object) -> list[tuple[Any, ...]]:  # type: ignore[no-untyped-def]
    with conn.cursor() as cur:
        cur.execute(query, args)
        return list(cur.fetchall())


def _postmasters_under(root: Path) -> list[str]:
    """Command lines of running processes that mention `root` (a postgres server of that folder)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            stat = (proc / "stat").read_text()
        except OSError:
            continue
        if str(root) in cmd and ") Z " not in stat:
            found.append(cmd)
    return found


def test_demo_end_to_end_counts_match_the_databases() -> None:
    rounds, changes = 2, 20
    checked: dict[str, Any] = {}

    def inspect(srv: DemoServer, result: DemoResult) -> None:
        checked["root"] = srv.server.data_dir.parent
        src, mrg = _connect(srv.source, srv.source_credential), _connect(srv.merge, srv.merge_credential)
        for table in ("customers", "addresses"):
            source_rows = _rows(src, f"SELECT * FROM public.{table} ORDER BY id")
            assert result.source_rows[table] == len(source_rows)
            for platform in ("yellowlive", "yellowforensic"):
                name = "YellowLive" if platform == "yellowlive" else "YellowForensic"
                # the ledger: batches 1..rounds, all committed, one per round
                ledger = _rows(mrg, f"SELECT batch_id, status FROM {platform}.ds_batches "
                                    "WHERE store = 'Store1' ORDER BY batch_id")
                assert ledger == [(n, "committed") for n in range(1, rounds + 1)]
                reported = [b for b in result.batches if b.platform == name and b.dataset == table]
                assert [b.batch_id for b in reported] == list(range(1, rounds + 1))
                assert reported == [
                    demo.BatchCounts(name, *r) for r in _rows(
                        mrg, f"SELECT batch_id, dataset, rows_total, rows_inserted, rows_updated, "
                             f"rows_deleted FROM {platform}.ds_batch_datasets WHERE store = 'Store1' "
                             f"AND dataset = %s ORDER BY batch_id", table)]
                # the current rows are exactly the source's, and the counts add up
                view = _rows(mrg, f"SELECT * FROM {platform}.store1_{table}_current ORDER BY id")
                assert view == source_rows
                assert result.current_rows[(name, table)] == len(view)
                assert reported[-1].total == len(source_rows)
                assert sum(b.inserted - b.deleted for b in reported) == len(source_rows)
                # Store3 reads the same tables as changes: the same rows, batch by batch counts that add up
                assert _rows(mrg, f"SELECT * FROM {platform}.store3_{table}_current ORDER BY id") == source_rows
                assert result.cdc_current_rows[(name, table)] == len(source_rows)
                changed = [b for b in result.cdc_batches if b.platform == name and b.dataset == table]
                assert [b.batch_id for b in changed] == list(range(1, rounds + 1))
                assert sum(b.inserted - b.deleted for b in changed) == len(source_rows)
                assert _rows(mrg, f"SELECT count(*) FROM {platform}.ds_batches WHERE store = 'Store3' "
                                  "AND source_lsn IS NOT NULL") == [(rounds - 1,)]
                if platform == "yellowforensic":
                    versions = _rows(mrg, f"SELECT count(*) FILTER (WHERE ds_batch_out = {FOREVER}), "
                                          f"count(*) FROM {platform}.store1_{table}")[0]
                    assert versions == (len(source_rows), sum(b.inserted + b.updated for b in reported))
        # the workspace's "as of <instant>" row is the version valid at the last batch snapshotted by then,
        # and its history is the customer's versions with the ledger's snapshot times
        as_of = result.as_of
        assert os.environ["SOURCE_USER"] == demo.SOURCE_ROLE  # for the engine, during the run
        snaps = _rows(mrg, "SELECT batch_id, snapshot_at FROM yellowforensic.ds_batches WHERE store = 'Store1' "
                           "ORDER BY batch_id")
        assert snaps[0][1] < as_of["at"] < snaps[1][1]  # between the first two snapshots
        old = _rows(mrg, "SELECT email, phone FROM yellowforensic.store1_customers WHERE id = %s "
                         "AND ds_batch_in <= 1 AND 1 < ds_batch_out", as_of["then"]["id"])
        assert old == [(as_of["then"]["email"], as_of["then"]["phone"])]
        at = dict(snaps)
        versions = _rows(mrg, "SELECT ds_batch_in, ds_batch_out, email, phone FROM yellowforensic.store1_customers "
                              "WHERE id = %s ORDER BY ds_batch_in", as_of["then"]["id"])
        starts = {v[0] for v in versions}
        assert as_of["history"] == [
            (at[b_in], at.get(b_out), None if b_out == FOREVER else ("update" if b_out in starts else "delete"),
             email, phone) for b_in, b_out, email, phone in versions]
        assert as_of["rows_then"] == _rows(mrg, "SELECT rows_total FROM yellowforensic.ds_batch_datasets "
                                                "WHERE dataset = 'customers' AND batch_id = 1")[0][0]
        # the workspace's role reads its schema only
        reader = srv.server.admin_connect(srv.merge.database)
        assert _rows(reader, "SELECT has_schema_privilege(%s, 'yellowforensic', 'USAGE'), "
                             "has_schema_privilege(%s, 'ws_marketing', 'USAGE')",
                     demo.WORKSPACE_ROLE, demo.WORKSPACE_ROLE) == [(False, True)]
        reader.close()
        src.close()
        mrg.close()
        checked["inspected"] = True

    out = io.StringIO()
    result = execute_demo(rounds=rounds, changes=changes, keep=None, seed=3,
                          console=Console(file=out, width=140), inspect=inspect, mariadb=False)
    assert checked.get("inspected")
    assert sum(result.simulated.values()) == rounds * changes
    assert result.merge_codes == [("YellowLive", 0), ("YellowForensic", 0)] * rounds
    assert result.cdc_merge_codes == [("YellowLive", 0), ("YellowForensic", 0)] * rounds
    text = out.getvalue()
    assert "Batches of store Store3, the same tables read as changes" in text
    assert "Batches of store Store1" in text and "between the first two snapshots:" in text
    assert "Workspace Marketing" in text and "ended_by" in text and "store1_customers_as_of(" in text
    # nothing left behind: the server stopped and its throwaway folder is gone
    assert not checked["root"].exists()
    assert _postmasters_under(checked["root"]) == []
    # the credentials were in the environment only while the demo ran
    assert os.environ.get("SOURCE_USER") != demo.SOURCE_ROLE
    assert os.environ.get("MERGE_USER") != demo.MERGE_ROLE


def test_demo_merges_a_mariadb_store_beside_the_postgresql_one() -> None:
    """Store2 (`type: mysql`) from the demo's throwaway MariaDB: every batch committed on both platforms and
    each `_current` view equal to the MariaDB source table, row for row; afterwards the MariaDB server is
    gone with its folder."""
    from datasurface.localmysql import find_server

    if find_server() is None:
        pytest.skip("SKIPPED LOUDLY: no MariaDB server binary (install Debian's mariadb-server; scripts/test.sh "
                    "does): the demo runs without its MariaDB store")
    import pymysql

    rounds, checked = 2, {}

    def inspect(srv: DemoServer, result: DemoResult) -> None:
        assert srv.mariadb is not None and srv.mariadb_credential is not None
        checked["root"] = srv.mariadb.data_dir.parent
        my = pymysql.connect(unix_socket=srv.mariadb.socket, user=srv.mariadb_credential.user,
                             password=srv.mariadb_credential.password, database=demo.SOURCE_DB)
        mrg = _connect(srv.merge, srv.merge_credential)
        for platform in ("yellowlive", "yellowforensic"):
            ledger = _rows(mrg, f"SELECT batch_id, status FROM {platform}.ds_batches WHERE store = 'Store2' "
                                "ORDER BY batch_id")
            assert ledger == [(n, "committed") for n in range(1, rounds + 1)]
            for table in ("customers", "addresses"):
                with my.cursor() as cur:
                    cur.execute(f"SELECT * FROM {table} ORDER BY id")
                    source_rows = list(cur.fetchall())
                my.rollback()
                assert len(source_rows) > 0 and result.mariadb_source_rows[table] == len(source_rows)
                assert _rows(mrg, f"SELECT * FROM {platform}.store2_{table}_current ORDER BY id") == source_rows
        my.close()
        mrg.close()
        checked["inspected"] = True

    out = io.StringIO()
    result = execute_demo(rounds=rounds, changes=15, keep=None, seed=5, console=Console(file=out, width=140),
                          inspect=inspect)
    assert checked.get("inspected")
    assert result.mariadb_merge_codes == [("YellowLive", 0), ("YellowForensic", 0)] * rounds
    assert result.merge_codes == [("YellowLive", 0), ("YellowForensic", 0)] * rounds
    assert sum(result.mariadb_simulated.values()) == rounds * 15
    assert "Batches of store Store2, source MariaDB" in out.getvalue()
    assert not checked["root"].exists() and _postmasters_under(checked["root"]) == []


def test_model_without_the_repository_is_the_example_model(monkeypatch: pytest.MonkeyPatch,
                                                           tmp_path: Path) -> None:
    from_repo = demo.model_document("/sock")
    assert from_repo["stores"][0]["source"]["host"] == "/sock"
    monkeypatch.setattr(demo, "EXAMPLE_MODEL", tmp_path / "missing.yaml")
    assert demo.model_document("/sock") == from_repo


def test_keep_must_be_a_new_or_empty_folder(tmp_path: Path) -> None:
    (tmp_path / "something").write_text("x")
    proc = subprocess.run([sys.executable, "-m", "datasurface.cli", "demo", "--keep", str(tmp_path)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "must be a new or empty folder" in proc.stderr
    if os.geteuid() == 0:  # the server would run as postgres, which cannot enter pytest's private tmp
        proc = subprocess.run([sys.executable, "-m", "datasurface.cli", "demo", "--keep", str(tmp_path / "new")],
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 2
        assert "cannot enter" in proc.stderr


@pytest.fixture
def keep_root() -> Iterator[Path]:
    """A folder the server's OS user can reach (pytest's tmp_path is private to root)."""
    root = Path(tempfile.mkdtemp(prefix="ds-demo-keep-"))
    root.chmod(0o755)
    yield root
    shutil.rmtree(root, ignore_errors=True)


def test_ctrl_c_stops_everything_and_keeps_the_data(tmp_path: Path, keep_root: Path) -> None:
    keep = keep_root / "kept"
    log = tmp_path / "out.log"
    with log.open("w") as out:
        # as in a terminal, where Ctrl-C reaches the demo: a suite started in the background by a shell without
        # job control (`cmd &`) runs with SIGINT ignored, which a child would inherit
        proc = subprocess.Popen([sys.executable, "-m", "datasurface.cli", "demo", "--rounds", "100000",
                                 "--changes", "20", "--keep", str(keep)],
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        try:
            deadline = time.monotonic() + 90
            while not re.search(r"^round 3: simulated", log.read_text(), re.M):
                assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
                time.sleep(0.1)
            os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does: the whole group
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:  # say where it hangs: its output and the processes still there
                tree = subprocess.run(["ps", "-eo", "pid,ppid,pgid,stat,etime,args"], capture_output=True, text=True)
                raise AssertionError(f"the demo did not stop within 60 s of Ctrl-C\n{log.read_text()}\n"
                                     f"{tree.stdout}") from None
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
    text = log.read_text()
    assert proc.returncode == 130, text
    assert "Kept" in text and str(keep.resolve()) in text
    assert (keep / "data" / "PG_VERSION").exists()
    assert not (keep / "data" / "postmaster.pid").exists()
    assert _postmasters_under(keep.resolve()) == []
    mariadb = re.search(r"MariaDB [\d.]+ on socket (/\S+?)/sock/mysqld\.sock", text)
    if mariadb:  # its server stopped too, its throwaway folder gone
        assert _postmasters_under(Path(mariadb.group(1))) == [] and not Path(mariadb.group(1)).exists()
    else:
        assert "MARIADB NOT INSTALLED" in text, text


def test_demo_script_is_the_quick_start(repo_root: Path) -> None:
    readme = (repo_root / "README.md").read_text()
    quick_start = readme.split("## Quick start", 1)[1]
    first_command = re.search(r"```bash\n(\S+)", quick_start)
    assert first_command and first_command.group(1) == "scripts/demo.sh"
    proc = subprocess.run(["bash", "scripts/demo.sh", "--rounds", "1", "--changes", "5"], cwd=repo_root,
                          capture_output=True, text=True, timeout=170)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Workspace Marketing" in proc.stdout and "at the first snapshot:" in proc.stdout
    assert "ended_by" in proc.stdout
    # the MariaDB store beside the PostgreSQL one, or a loud line saying why not
    assert ("Batches of store Store2" in proc.stdout) != ("MARIADB NOT INSTALLED" in proc.stdout), proc.stdout
    assert proc.stdout.strip().splitlines()[-1] == "DATASURFACE_RESULT_CODE=0"


def test_a_ctrl_c_that_a_library_swallowed_still_stops_the_rounds(monkeypatch: pytest.MonkeyPatch) -> None:
    """A Ctrl-C whose KeyboardInterrupt some library caught (inside the simulator here) still ends the demo at
    its next step (interrupts.py counts every Ctrl-C); before, the rounds went on, and a CI run saw the demo
    keep merging for a minute after its Ctrl-C."""
    from datasurface import interrupts
    from datasurface.simulator import Simulator

    real_run = Simulator.run
    calls = {"n": 0}

    def run_then_swallow_a_ctrl_c(self: Simulator, changes: int) -> Any:
        calls["n"] += 1
        if calls["n"] == 2:
            try:
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(1)  # the handler raises here
            except KeyboardInterrupt:
                pass  # what a library that catches everything does
        return real_run(self, changes)

    monkeypatch.setattr(Simulator, "run", run_then_swallow_a_ctrl_c)
    previous = signal.getsignal(signal.SIGINT)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    interrupts.watch()
    try:
        with pytest.raises(KeyboardInterrupt):
            execute_demo(rounds=50, changes=5, keep=None, seed=3, console=Console(file=io.StringIO(), width=140),
                         mariadb=False)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert calls["n"] == 2, "the rounds went on after the Ctrl-C"
