"""A merge over TLS: every session of the job (the merge, its heartbeat and run history, the source) takes
libpq's TLS settings from its environment (`PGSSLMODE`, `PGSSLROOTCERT`), as a pod's env gives them.

The server accepts TCP only with TLS (`hostssl`, no `host` line) and the job is told `verify-full` with the
server's certificate as its root: a session that did not do TLS, or did it against another certificate or
host name, fails, and the server's log names every session of the job as "SSL enabled".
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg2
import pytest

from datasurface.localpg import SUPERUSER, LocalPostgres, _is_root, find_bin_dir
from tests.support.databases import Databases, make_databases
from tests.support.engine import create_source_tables, load_snapshot, merge_args, model_dict, run_job, write_model

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, Path, Databases]]:
    """A server listening on 127.0.0.1 (a free port) that takes TCP sessions only over TLS, with a source and
    a merge database (made through its Unix socket, before the port moves)."""
    server = LocalPostgres(find_bin_dir()).start()
    try:
        on_socket = make_databases(server)
        certs = tmp_path_factory.mktemp("tls")
        cert = certs / "server.crt"
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                        "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                        "-keyout", str(server.data_dir / "server.key"), "-out", str(cert)],
                       check=True, capture_output=True, timeout=60)
        shutil.copy(cert, server.data_dir / "server.crt")
        os.chmod(server.data_dir / "server.key", 0o600)
        if _is_root():
            shutil.chown(server.data_dir / "server.key", SUPERUSER, SUPERUSER)
            shutil.chown(server.data_dir / "server.crt", SUPERUSER, SUPERUSER)
        (server.data_dir / "pg_hba.conf").write_text(
            "local all all scram-sha-256\nhostssl all all 127.0.0.1/32 scram-sha-256\n")
        port = _free_port()
        conn = server.admin_connect()
        conn.autocommit = True
        with conn.cursor() as cur:
            for name, value in (("listen_addresses", "127.0.0.1"), ("port", str(port)), ("ssl", "on"),
                                ("log_connections", "on")):
                cur.execute(f"ALTER SYSTEM SET {name} = %s", (value,))
        conn.close()
        server.stop_server_only()
        server.start_server_only()
        yield server, cert, Databases(server=server, source=on_socket.source, merge=on_socket.merge,
                                      host="127.0.0.1", port=port, env=on_socket.env)
    finally:
        server.stop()


def test_every_session_of_a_merge_is_verify_full_tls(tls_server: tuple[Any, Path, Databases], tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    server, cert, dbs = tls_server
    # libpq's environment: every session below, the test's and the job's, is verify-full TLS to 127.0.0.1
    monkeypatch.setenv("PGSSLMODE", "verify-full")
    monkeypatch.setenv("PGSSLROOTCERT", str(cert))
    with pytest.raises(psycopg2.OperationalError, match=r"no pg_hba\.conf entry"):  # the server refuses plain TCP
        psycopg2.connect(host="127.0.0.1", port=dbs.port, dbname=dbs.source, user=dbs.env["SOURCE_USER"],
                         password=dbs.env["SOURCE_PASSWORD"], sslmode="disable").close()
    src = dbs.connect(dbs.source)
    create_source_tables(src)
    load_snapshot(src, {"alltypes": {}, "pairs": {("EU", 1): ("EU", 1, "one", 1.5), ("US", 2): ("US", 2, None, 2)}})
    src.close()
    model = write_model(tmp_path / "model", model_dict(dbs.host, dbs.port, dbs.source))
    log = server.data_dir.parent / "server.log"
    seen = log.stat().st_size

    proc = run_job(merge_args(model, "Tls", "live", dbs), dbs.env)
    assert proc.returncode == 0, proc.stdout + proc.stderr

    with log.open() as f:
        f.seek(seen)
        authorized = [line for line in f if "connection authorized" in line and "datasurface-job" in line]
    roles = sorted(line.split("application_name=datasurface-job ")[1].split()[0] for line in authorized)
    assert roles == ["heartbeat", "history", "merge", "source"], authorized
    assert all("SSL enabled" in line for line in authorized), authorized
    mrg = dbs.connect(dbs.merge)
    with mrg.cursor() as cur:
        cur.execute('SELECT region, code, note FROM tls.store1_pairs_current ORDER BY region')
        assert cur.fetchall() == [("EU", 1, "one"), ("US", 2, None)]
    mrg.close()
