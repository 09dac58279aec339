"""A user's own PostgreSQL that takes TCP only over TLS, as the release's external database: a CA and a
server certificate made with openssl, and the server as a pod of the emulated namespace (the postgres
image's first start runs an init script making the roles and databases and writing a pg_hba.conf of
`hostssl` lines only, `hostnossl ... reject`), behind a Service of its own, with every connection logged.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

from tests.system.kubelet import secret

NAMESPACE = "default"
SERVICE = "pg-tls"
HOST = f"{SERVICE}.{NAMESPACE}.svc.cluster.local"  # the name in the server certificate
DB_SECRET = "datasurface-db"
CA_SECRET = "datasurface-db-ca"
ROLES = ("source", "merge", "airflow")

INIT_SCRIPT = r"""# sourced by the postgres image's entrypoint on the server's first start (socket only)
set -euo pipefail
for role in source merge airflow; do
  user_var="${role^^}_USERNAME" password_var="${role^^}_PASSWORD"
  psql -v ON_ERROR_STOP=1 -U "${POSTGRES_USER:-postgres}" -d postgres \
       -v u="${!user_var}" -v p="${!password_var}" <<'SQL'
CREATE ROLE :"u" LOGIN PASSWORD :'p';
SQL
done
# the example model's Store3 reads the source's changes (change data capture)
psql -v ON_ERROR_STOP=1 -U "${POSTGRES_USER:-postgres}" -d postgres -v u="$SOURCE_USERNAME" <<'SQL'
ALTER ROLE :"u" REPLICATION;
SQL
for pair in customer_db:SOURCE merge_db:MERGE airflow_db:AIRFLOW; do
  user_var="${pair#*:}_USERNAME"
  psql -v ON_ERROR_STOP=1 -U "${POSTGRES_USER:-postgres}" -d postgres -v d="${pair%%:*}" -v u="${!user_var}" <<'SQL'
CREATE DATABASE :"d" OWNER :"u";
SQL
done
# TCP only over TLS: a plain TCP connection matches the reject line whatever its user or database
cat >"$PGDATA/pg_hba.conf" <<'HBA'
local     all all     trust
hostssl   all all all scram-sha-256
hostnossl all all all reject
HBA
"""


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_ca(folder: Path, name: str) -> Path:
    """A self-signed CA (key and certificate) named `name` in the folder; the certificate's path."""
    folder.mkdir(parents=True, exist_ok=True)
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", f"/CN={name}",
            "-keyout", f"{name}.key", "-out", f"{name}.crt", "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=folder)
    return folder / f"{name}.crt"


def make_server_cert(folder: Path, ca: str, host: str) -> tuple[bytes, bytes]:
    """A server key and a certificate for `host` (its subjectAltName) signed by the CA `ca`."""
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={host}", "-keyout", "server.key",
            "-out", "server.csr", cwd=folder)
    (folder / "server.ext").write_text(f"subjectAltName=DNS:{host}\nextendedKeyUsage=serverAuth\n")
    openssl("x509", "-req", "-in", "server.csr", "-CA", f"{ca}.crt", "-CAkey", f"{ca}.key", "-CAcreateserial",
            "-days", "2", "-extfile", "server.ext", "-out", "server.crt", cwd=folder)
    return (folder / "server.crt").read_bytes(), (folder / "server.key").read_bytes()


def server_objects(folder: Path, passwords: dict[str, str]) -> list[dict[str, Any]]:
    """What the user creates in the namespace before installing the chart: the database Secret (the
    chart's externalDatabase.existingSecret), the CA Secret (caSecret), and the server itself: its
    certificate Secret, init script, Pod and Service."""
    ca = make_ca(folder, "ca")
    cert, key = make_server_cert(folder, "ca", HOST)
    db = {f"{r}-username": r for r in ROLES} | {f"{r}-password": passwords[r] for r in ROLES}
    tls = secret("pg-tls-server", {}, NAMESPACE)
    tls["stringData"] = {"tls.crt": cert.decode(), "tls.key": key.decode()}
    env = [{"name": "POSTGRES_PASSWORD", "value": "superuser-on-the-socket-only"}]
    for role in ROLES:
        for what in ("username", "password"):
            env.append({"name": f"{role.upper()}_{what.upper()}",
                        "valueFrom": {"secretKeyRef": {"name": DB_SECRET, "key": f"{role}-{what}"}}})
    pod = {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": SERVICE, "namespace": NAMESPACE, "labels": {"app": SERVICE}},
        "spec": {
            # the key is group-readable for fsGroup 999 (root-owned 0640: PostgreSQL accepts that)
            "securityContext": {"runAsUser": 999, "runAsGroup": 999, "fsGroup": 999},
            "containers": [{
                "name": "postgres", "image": "postgres:15",
                "args": ["-c", "ssl=on", "-c", "ssl_cert_file=/tls/tls.crt", "-c", "ssl_key_file=/tls/tls.key",
                         "-c", "log_connections=on", "-c", "wal_level=logical"],
                "env": env,
                "startupProbe": {"tcpSocket": {"port": 5432}, "periodSeconds": 1, "failureThreshold": 60},
                "volumeMounts": [{"name": "tls", "mountPath": "/tls", "readOnly": True},
                                 {"name": "init", "mountPath": "/docker-entrypoint-initdb.d", "readOnly": True}],
            }],
            "volumes": [{"name": "tls", "secret": {"secretName": "pg-tls-server", "defaultMode": 0o640}},
                        {"name": "init", "configMap": {"name": "pg-tls-init"}}],
        },
    }
    return [
        secret(DB_SECRET, db, NAMESPACE),
        secret(CA_SECRET, {"ca.crt": ca.read_text()}, NAMESPACE),
        tls,
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "pg-tls-init", "namespace": NAMESPACE},
         "data": {"10-roles.sh": INIT_SCRIPT}},
        pod,
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": SERVICE, "namespace": NAMESPACE},
         "spec": {"selector": {"app": SERVICE}, "ports": [{"name": "postgresql", "port": 5432}]}},
    ]
