"""Every failure is one clear line: a missing privilege says which privilege on which object; a source
server that dies during the snapshot says that the connection to the source was lost, and which server."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tests.support.databases import make_databases
from tests.support.engine import assert_one_line_error, merge_args, merge_state, one_dataset_model, run_job, write_model


def test_a_missing_privilege_is_one_line_naming_it(world: dict[str, Any]) -> None:
    dbs = world["dbs"]
    admin = dbs.server.admin_connect(dbs.merge)
    with admin.cursor() as cur:  # a platform schema the merge role may not create objects in
        cur.execute("CREATE SCHEMA yellowp")
    admin.close()
    proc = run_job(merge_args(world["model"], "YellowP", "live", dbs), dbs.env)
    assert_one_line_error(proc, "permission denied for schema yellowp", "the job's role needs this privilege")
    assert "unexpected error" not in proc.stderr


def test_a_source_server_dying_during_the_copy_is_named(tmp_path: Path, dbs: Any) -> None:
    from datasurface.localpg import LocalPostgres, find_bin_dir

    source_server = LocalPostgres(find_bin_dir("any")).start()
    try:
        sdb = make_databases(source_server)
        src = sdb.connect(sdb.source)
        with src.cursor() as cur:
            cur.execute("CREATE TABLE big (id integer PRIMARY KEY, note text)")
            cur.execute("INSERT INTO big SELECT g, repeat(md5(g::text), 8) FROM generate_series(1, 400000) g")
        src.commit()
        src.close()
        admin = source_server.admin_connect(sdb.source)
        with admin.cursor() as cur:  # the suite's servers commit asynchronously: make the table survive the crash
            cur.execute("CHECKPOINT")
        admin.close()
        model = write_model(tmp_path / "model",
                            one_dataset_model(sdb, "Store1", "big", [("id", "integer"), ("note", "text")]))
        env = {**dbs.env, "SOURCE_USER": sdb.env["SOURCE_USER"], "SOURCE_PASSWORD": sdb.env["SOURCE_PASSWORD"]}
        job = subprocess.Popen([sys.executable, "-m", "datasurface.cli", *merge_args(model, "Lost", "live", dbs)],
                               env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        admin = source_server.admin_connect(sdb.source)
        deadline = time.monotonic() + 60
        with admin.cursor() as cur:
            while time.monotonic() < deadline:
                cur.execute("SELECT 1 FROM pg_stat_activity WHERE state = 'active' AND query LIKE 'COPY (SELECT%'")
                if cur.fetchone():
                    break
                time.sleep(0.02)
        admin.close()
        source_server.stop_server_only("immediate")  # the source crashes in the middle of the snapshot
        out, err = job.communicate(timeout=60)
        proc = subprocess.CompletedProcess(job.args, job.returncode, out, err)
        assert_one_line_error(proc, "batch 1 of store Store1", "lost the connection to the source database "
                              f"'{sdb.source}' at socket {sdb.host}")
        assert "PGRES" not in err and "libpq" not in err
        mrg = dbs.connect(dbs.merge)
        assert merge_state(mrg, "lost") == {"ds_batch_datasets": [], "ds_batches": [], "store1_big": [],
                                            "store1_big_current": []}
        mrg.close()
        source_server.start_server_only()
        assert run_job(merge_args(model, "Lost", "live", dbs), env).returncode == 0
    finally:
        source_server.stop()
