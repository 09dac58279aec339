"""`datasurface-job`: the command line (docs/cli.md), as typer commands. Thin: each command calls one
library function.

Errors are one line on stderr (a traceback only with --debug); the last stdout line is always
`DATASURFACE_RESULT_CODE=<status>` so a caller can read the result without parsing logs. A plain
`merge` (the command a platform runs every few minutes per store) does not come here: `datasurface.cli`
parses it without importing typer, click or rich (cli/fast.py); everything else, `--help` included, does.
"""

from __future__ import annotations

import importlib
import importlib.util
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer

from datasurface import __version__
from datasurface.cli.outcome import configure_logging, failed, result_line
from datasurface.errors import EXIT_FAILURE, EXIT_OK, EXIT_USAGE

app = typer.Typer(
    name="datasurface-job",
    help="Ingest operational PostgreSQL tables as snapshots into live and forensic merge tables.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)

_state = {"debug": False}

# --- options shared by the commands that work on a platform's merge database -------------------

Model = Annotated[str, typer.Option("--model", envvar="DATASURFACE_MODEL", show_envvar=True,
    help="Model repository: a git URL (https, ssh, file://) or a local directory.")]
ModelRef = Annotated[str | None, typer.Option("--model-ref", envvar="DATASURFACE_MODEL_REF", show_envvar=True,
    help="Branch, tag or commit of the model repository (default: the remote's default branch).")]
ModelPath = Annotated[str, typer.Option("--model-path", envvar="DATASURFACE_MODEL_PATH", show_envvar=True,
    help="The model file inside the repository.")]
OptionalModel = Annotated[str | None, typer.Option("--model", envvar="DATASURFACE_MODEL", show_envvar=True,
    help="Model repository (a git URL or a local directory): where its cdc stores' sources are, to read the WAL "
    "their replication slots retain. Without it, no slot figures.")]
Platform = Annotated[str, typer.Option("--platform", envvar="DATASURFACE_PLATFORM", show_envvar=True,
    help="Platform name; its merge schema is the name in lower case.")]
Mode = Annotated[str, typer.Option("--mode", envvar="DATASURFACE_MODE", show_envvar=True,
    help="live (current rows only) or forensic (every version, SCD type 2).")]
StoreOpt = Annotated[str, typer.Option("--store", envvar="DATASURFACE_STORE", show_envvar=True,
    help="The store (from the model) to ingest.")]
StoresOpt = Annotated[list[str], typer.Option("--store", envvar="DATASURFACE_STORE", show_envvar=True,
    help="The store (from the model) to ingest. Repeat it, or separate names with commas (as the env var "
    "does), to merge several stores in one run: each as a run of its own would, one's failure never "
    "stopping another's.")]
Parallel = Annotated[int, typer.Option("--parallel", envvar="DATASURFACE_PARALLEL", show_envvar=True,
    help="How many of the stores to merge at once.")]
MergeHost = Annotated[str, typer.Option("--merge-host", envvar="DATASURFACE_MERGE_HOST", show_envvar=True,
    help="Merge database host, or a Unix-socket directory (starts with /).")]
MergePort = Annotated[int, typer.Option("--merge-port", envvar="DATASURFACE_MERGE_PORT", show_envvar=True,
    help="Merge database port.")]
MergeDatabase = Annotated[str, typer.Option("--merge-database", envvar="DATASURFACE_MERGE_DATABASE",
    show_envvar=True, help="Merge database name.")]
MergeCredential = Annotated[str, typer.Option("--merge-credential", envvar="DATASURFACE_MERGE_CREDENTIAL",
    show_envvar=True, help="Credential name X: the user and password come from env X_USER and X_PASSWORD.")]
LockWait = Annotated[float, typer.Option("--lock-wait", envvar="DATASURFACE_LOCK_WAIT", show_envvar=True,
    help="Seconds to wait for another live run on the same stream before giving up (0: fail at once). "
    "A run that holds the stream but stopped answering (killed, frozen) is ended and taken over meanwhile.")]
LockTimeout = Annotated[float, typer.Option("--lock-timeout", envvar="DATASURFACE_LOCK_TIMEOUT", show_envvar=True,
    help="Total seconds a run waits for locks that other sessions (consumers) hold on the merge tables; "
    "each wait is a short step, retried with backoff, so readers never queue behind the job.")]
SessionTimeout = Annotated[float, typer.Option("--session-timeout", envvar="DATASURFACE_SESSION_TIMEOUT",
    show_envvar=True, help="Seconds after which the database servers end a session of this job whose "
    "client went silent (idle_in_transaction_session_timeout, idle_session_timeout; TCP keepalives).")]
OrphanTimeout = Annotated[float, typer.Option("--orphan-timeout", envvar="DATASURFACE_ORPHAN_TIMEOUT",
    show_envvar=True, help="Seconds without a heartbeat after which a run holding the stream is taken "
    "for dead or frozen: its sessions are ended and this run takes over (finishing its batch, exit 10).")]


def _limits(lock_wait: float, lock_timeout: float, session_timeout: float, orphan_timeout: float):  # type: ignore[no-untyped-def]
    from datasurface.sessions import limits_from_options

    return limits_from_options(lock_wait, lock_timeout, session_timeout, orphan_timeout)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"datasurface-job {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    debug: Annotated[bool, typer.Option("--debug", envvar="DATASURFACE_DEBUG",
        help="Show the full traceback on errors.")] = False,
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
        help="Show the version and exit.")] = False,
) -> None:
    _state["debug"] = debug
    configure_logging(debug)


def _merge_target(host: str, port: int, database: str, credential: str):  # type: ignore[no-untyped-def]
    from datasurface.db import Endpoint

    return Endpoint(host=host, port=port, database=database), credential


@app.command()
def merge(
    platform: Platform,
    mode: Mode,
    store: StoresOpt,
    merge_host: MergeHost,
    merge_database: MergeDatabase,
    merge_credential: MergeCredential,
    model: Model,
    model_ref: ModelRef = None,
    model_path: ModelPath = "datasurface.yaml",
    merge_port: MergePort = 5432,
    lock_wait: LockWait = 60.0,
    lock_timeout: LockTimeout = 300.0,
    session_timeout: SessionTimeout = 60.0,
    orphan_timeout: OrphanTimeout = 15.0,
    parallel: Parallel = 1,
) -> None:
    """Bring the store's stream(s) forward by one committed batch.

    Exit 0: a fresh batch was committed.

    Exit 10: a batch left open by an interrupted run was finished; run again for a fresh snapshot.

    Exit 1: failure, with nothing half-applied. Exit 2: usage error.

    With several stores: one line on stderr per store that failed, naming it; exit 1 if any failed, else 10
    if any finished a batch left open, else 0.
    """
    from datasurface.group import run_merge

    endpoint, cred = _merge_target(merge_host, merge_port, merge_database, merge_credential)
    raise typer.Exit(run_merge(model=model, model_ref=model_ref, model_path=model_path, platform=platform,
                               mode=mode, store=store, merge=endpoint, merge_credential=cred,
                               limits=_limits(lock_wait, lock_timeout, session_timeout, orphan_timeout),
                               parallel=parallel))


@app.command("reset-batch")
def reset_batch(
    platform: Platform,
    store: StoreOpt,
    merge_host: MergeHost,
    merge_database: MergeDatabase,
    merge_credential: MergeCredential,
    dataset: Annotated[str | None, typer.Option("--dataset", envvar="DATASURFACE_DATASET", show_envvar=True,
        help="The dataset, for a single_dataset store (each dataset is its own stream).")] = None,
    batch: Annotated[int | None, typer.Option("--batch", help="Only this batch id (refused if committed); "
        "default: the stream's open batch, if any.")] = None,
    merge_port: MergePort = 5432,
    lock_wait: LockWait = 60.0,
    lock_timeout: LockTimeout = 300.0,
    session_timeout: SessionTimeout = 60.0,
    orphan_timeout: OrphanTimeout = 15.0,
) -> None:
    """Discard the stream's open (uncommitted) batch so the next merge starts fresh with the current model.

    Refuses a committed batch (exit 1). Exit 0 when it reset something or nothing was open.
    """
    from datasurface.commands.reset_batch import run_reset_batch

    endpoint, cred = _merge_target(merge_host, merge_port, merge_database, merge_credential)
    run_reset_batch(platform=platform, store=store, dataset=dataset, merge=endpoint, merge_credential=cred,
                    batch_id=batch, limits=_limits(lock_wait, lock_timeout, session_timeout, orphan_timeout))


@app.command("reset-store")
def reset_store(
    platform: Platform,
    store: Annotated[str, typer.Option("--store", envvar="DATASURFACE_STORE", show_envvar=True,
        help="The store to reset; also one that is no longer in the model (found from the platform's ledger).")],
    merge_host: MergeHost,
    merge_database: MergeDatabase,
    merge_credential: MergeCredential,
    model: Model,
    model_ref: ModelRef = None,
    model_path: ModelPath = "datasurface.yaml",
    merge_port: MergePort = 5432,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only list what would be dropped; change nothing.")]
        = False,
    yes: Annotated[bool, typer.Option("--yes", help="Drop it. Without --yes (or --dry-run) the list is printed "
        "and nothing is dropped (exit 2).")] = False,
    lock_wait: LockWait = 60.0,
    lock_timeout: LockTimeout = 300.0,
    session_timeout: SessionTimeout = 60.0,
    orphan_timeout: OrphanTimeout = 15.0,
) -> None:
    """Drop one store's objects on one platform, so that its next merge starts again at batch 1 from a full
    snapshot.

    Drops the store's merge tables (with their indexes, triggers and grants: an index someone added to one
    is listed as going with it), their _current views and, on a forensic platform, their _history views and
    as-of functions; its staging tables; its views and functions in the platform's workspaces (the next setup
    creates them again); its rows of ds_batches, ds_batch_datasets, ds_runs and ds_run_totals; and, for a
    change-data-capture store, its replication slot on the source. On a forensic platform the store's history
    is lost for good: every version of its rows, and what its as-of queries showed.

    This is how to apply a model change that merge refuses: a column's type, the primary key, a removed
    column. Change the model, reset the store on each platform, merge again.

    Nothing else is touched: other stores, other platforms, objects the job did not create. An object of
    someone else's that depends on one of the store's (a view on its merge table) stops the reset with a line
    naming it; nothing is ever dropped with CASCADE. Everything goes in one transaction, under the store's
    stream locks and the platform's DDL lock (a running merge is waited for, up to --lock-wait).

    Exit 0: reset, listed (--dry-run), or nothing to reset. Exit 2: without --yes. Exit 1: failure, nothing
    dropped.
    """
    from datasurface.commands.reset_store import run_reset_store

    endpoint, cred = _merge_target(merge_host, merge_port, merge_database, merge_credential)
    run_reset_store(model=model, model_ref=model_ref, model_path=model_path, platform=platform, store=store,
                    merge=endpoint, merge_credential=cred, dry_run=dry_run, yes=yes,
                    limits=_limits(lock_wait, lock_timeout, session_timeout, orphan_timeout))


@app.command()
def setup(
    platform: Platform,
    mode: Mode,
    merge_host: MergeHost,
    merge_database: MergeDatabase,
    merge_credential: MergeCredential,
    model: Model,
    store: Annotated[list[str] | None, typer.Option("--store", envvar="DATASURFACE_STORES", show_envvar=True,
        help="Stores to set up (repeatable; default: every store in the model).")] = None,
    model_ref: ModelRef = None,
    model_path: ModelPath = "datasurface.yaml",
    merge_port: MergePort = 5432,
    lock_timeout: LockTimeout = 300.0,
    session_timeout: SessionTimeout = 60.0,
) -> None:
    """Validate the model and create or evolve the platform's schema, tables and views (forensic: also the
    history views and as-of functions), and reconcile the platform's workspaces: their ws_<name> schemas,
    views, functions and grants to their existing roles (no ingestion)."""
    from datasurface.commands.setup import run_setup

    endpoint, cred = _merge_target(merge_host, merge_port, merge_database, merge_credential)
    run_setup(model=model, model_ref=model_ref, model_path=model_path, platform=platform, mode=mode,
              stores=store or None, merge=endpoint, merge_credential=cred,
              limits=_limits(0.0, lock_timeout, session_timeout, 15.0))


@app.command()
def status(
    platform: Platform,
    merge_host: MergeHost,
    merge_database: MergeDatabase,
    merge_credential: MergeCredential,
    store: Annotated[str | None, typer.Option("--store", envvar="DATASURFACE_STORE", show_envvar=True,
        help="Only this store.")] = None,
    limit: Annotated[int, typer.Option("--limit", help="How many recent batches to list (0: none).")] = 10,
    merge_port: MergePort = 5432,
    model: OptionalModel = None,
    model_ref: ModelRef = None,
    model_path: ModelPath = "datasurface.yaml",
) -> None:
    """Per stream: how old its data is, the last batch's counts and duration, an open batch and the last
    failure (when, why); with the model, the WAL each cdc stream's replication slot keeps on its source
    (read with the source credentials); then the recent batches."""
    from datasurface.observe.status import run_status

    endpoint, cred = _merge_target(merge_host, merge_port, merge_database, merge_credential)
    run_status(platform=platform, store=store, limit=limit, merge=endpoint, merge_credential=cred, model=model,
               model_ref=model_ref, model_path=model_path)


@app.command()
def exporter(
    platform: Annotated[list[str], typer.Option("--platform", envvar="DATASURFACE_PLATFORMS", show_envvar=True,
        help="Platform to export (repeatable); the `platform` label is the name as given.")],
    merge_host: MergeHost,
    merge_database: MergeDatabase,
    merge_credential: MergeCredential,
    merge_port: MergePort = 5432,
    port: Annotated[int, typer.Option("--port", envvar="DATASURFACE_EXPORTER_PORT", show_envvar=True,
        help="HTTP port of /metrics and /healthz (0: any free port).")] = 9108,
    address: Annotated[str, typer.Option("--address", envvar="DATASURFACE_EXPORTER_ADDRESS", show_envvar=True,
        help="Address to listen on.")] = "0.0.0.0",
    scrape_timeout: Annotated[float, typer.Option("--scrape-timeout", envvar="DATASURFACE_SCRAPE_TIMEOUT",
        show_envvar=True, min=0.5,
        help="Seconds a scrape waits for the merge database (and the sources) before answering without them.")] = 5.0,
    model: OptionalModel = None,
    model_ref: ModelRef = None,
    model_path: ModelPath = "datasurface.yaml",
    model_refresh: Annotated[float, typer.Option("--model-refresh", envvar="DATASURFACE_MODEL_REFRESH",
        show_envvar=True, min=1.0, help="Seconds between two loads of the model (with --model).")] = 300.0,
) -> None:
    """Serve Prometheus metrics read from the platforms' ledgers at each scrape (GET /metrics, GET /healthz).

    With --model, also the WAL each cdc store's replication slot retains on its source
    (datasurface_source_slot_retained_bytes), read with the source credentials from env.
    Runs until SIGTERM or Ctrl-C.
    """
    from datasurface.observe.exporter import ModelSpec, run_exporter

    endpoint, cred = _merge_target(merge_host, merge_port, merge_database, merge_credential)
    run_exporter(platforms=platform, merge=endpoint, merge_credential=cred, address=address, port=port,
                 scrape_timeout=scrape_timeout, model=ModelSpec(model, model_ref, model_path) if model else None,
                 model_refresh=model_refresh)


@app.command()
def check(
    model: Model,
    merge_host: MergeHost,
    merge_database: MergeDatabase,
    merge_credential: MergeCredential,
    model_ref: ModelRef = None,
    model_path: ModelPath = "datasurface.yaml",
    merge_port: MergePort = 5432,
) -> None:
    """Check connectivity: the model loads and validates, every store's source and the merge database answer."""
    from datasurface.commands.check import run_check

    endpoint, cred = _merge_target(merge_host, merge_port, merge_database, merge_credential)
    run_check(model=model, model_ref=model_ref, model_path=model_path, merge=endpoint, merge_credential=cred)


class DbType(StrEnum):
    """The databases `simulate` can drive."""

    postgres = "postgres"
    mysql = "mysql"


@app.command()
def simulate(
    host: Annotated[str | None, typer.Option("--host", envvar="DATASURFACE_SIM_HOST", show_envvar=True,
        help="Source database host, or a Unix-socket directory (starts with /; for mysql the socket file). "
             "Default: the --store's.")] = None,
    database: Annotated[str | None, typer.Option("--database", envvar="DATASURFACE_SIM_DATABASE",
        show_envvar=True, help="Source database name. Default: the --store's.")] = None,
    credential: Annotated[str | None, typer.Option("--credential", envvar="DATASURFACE_SIM_CREDENTIAL",
        show_envvar=True, help="Credential name X: env X_USER and X_PASSWORD. Default: the --store's.")] = None,
    port: Annotated[int | None, typer.Option("--port", envvar="DATASURFACE_SIM_PORT", show_envvar=True,
        help="Source database port (default: the --store's, else 5432; 3306 with --db-type mysql).")] = None,
    db_type: Annotated[DbType | None, typer.Option("--db-type", envvar="DATASURFACE_SIM_DB_TYPE", show_envvar=True,
        help="The source database: postgres, or mysql (MySQL 8 / MariaDB 10.6+; a --host starting with / "
             "is the server's socket file). Default: the --store's source type, else postgres.")] = None,
    model: Annotated[str | None, typer.Option("--model", envvar="DATASURFACE_SIM_MODEL", show_envvar=True,
        help="Take the source (type, host, port, database, schema, credential) from a store of this model: "
             "a git URL (https, ssh, file://) or a local directory; needs --store. The flags above override "
             "its values.")] = None,
    store: Annotated[str | None, typer.Option("--store", envvar="DATASURFACE_SIM_STORE", show_envvar=True,
        help="The store (from --model) whose source to change.")] = None,
    model_ref: Annotated[str | None, typer.Option("--model-ref", envvar="DATASURFACE_SIM_MODEL_REF",
        show_envvar=True, help="Branch, tag or commit of the model repository (default: the remote's "
                               "default branch).")] = None,
    model_path: Annotated[str, typer.Option("--model-path", envvar="DATASURFACE_SIM_MODEL_PATH", show_envvar=True,
        help="The model file inside the repository.")] = "datasurface.yaml",
    create_tables: Annotated[bool, typer.Option("--create-tables",
        help="Create customers/addresses if missing and seed a few rows if empty.")] = False,
    max_changes: Annotated[int, typer.Option("--max-changes", envvar="DATASURFACE_SIM_MAX_CHANGES",
        show_envvar=True, help="Stop after N operations; 0 runs until SIGTERM/SIGINT.")] = 0,
    min_interval: Annotated[float, typer.Option("--min-interval", envvar="DATASURFACE_SIM_MIN_INTERVAL",
        show_envvar=True, help="Minimum seconds between operations.")] = 1.0,
    max_interval: Annotated[float, typer.Option("--max-interval", envvar="DATASURFACE_SIM_MAX_INTERVAL",
        show_envvar=True, help="Maximum seconds between operations.")] = 5.0,
    seed: Annotated[int | None, typer.Option("--seed", envvar="DATASURFACE_SIM_SEED", show_envvar=True,
        help="Make the sequence of operations reproducible.")] = None,
    max_disconnected: Annotated[float, typer.Option("--max-disconnected",
        envvar="DATASURFACE_SIM_MAX_DISCONNECTED", show_envvar=True,
        help="Give up (exit 1) after this many seconds without a database connection.")] = 300.0,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log one line per operation.")] = False,
) -> None:
    """Keep the source database busy with realistic customer and address changes: the one the flags name,
    or the source of a store of the model (--model, --store)."""
    from datasurface.errors import UsageError
    from datasurface.simulator import run_simulator
    from datasurface.simulator.target import ModelRef

    if (store or model_ref) and not model:
        raise UsageError("--store and --model-ref name a store of a model: give --model too")
    run_simulator(host=host, port=port, database=database, credential=credential, create_tables=create_tables,
                  max_changes=max_changes, min_interval=min_interval, max_interval=max_interval, seed=seed,
                  max_disconnected=max_disconnected, verbose=verbose, db_type=db_type.value if db_type else None,
                  model=ModelRef(model, store or "", model_ref, model_path) if model else None)


@app.command()
def demo(
    rounds: Annotated[int, typer.Option("--rounds", help="Rounds of simulate → live merge → forensic merge.")] = 5,
    changes: Annotated[int, typer.Option("--changes", help="Simulated changes per round.")] = 50,
    keep: Annotated[Path | None, typer.Option("--keep", help="Keep the database in this folder.")] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed for the simulator.")] = 1,
    mariadb: Annotated[bool | None, typer.Option("--mariadb/--no-mariadb",
        help="Also merge Store2 from a throwaway MariaDB (default: when Debian's mariadb-server is "
             "installed; --mariadb requires it).")] = None,
) -> None:
    """Run the whole pipeline locally on a throwaway PostgreSQL (no cluster), and a MariaDB store beside it
    when MariaDB is installed."""
    from datasurface.demo import run_demo

    run_demo(rounds=rounds, changes=changes, keep=keep, seed=seed, mariadb=mariadb)


# Typer raises click's exceptions: click's own in older typer, its vendored copy (typer._click, no click
# dependency) in newer ones. Either works, so only a lower bound is pinned: typer>=0.19 (older typer breaks
# with click 8.2+); the Airflow environment brings a newer one.
_CLICK_ERRORS: Any = importlib.import_module(
    "typer._click.exceptions" if importlib.util.find_spec("typer._click") else "click.exceptions")


def main(argv: list[str] | None = None) -> int:
    """Entry point: runs a command and maps every outcome to an exit status."""
    code = EXIT_OK
    try:
        returned = app(args=argv, standalone_mode=False)
        if returned == 130:  # typer turns Ctrl-C into a *returned* 130 when not in standalone mode
            typer.echo("datasurface-job: interrupted", err=True)
            code = 130
        elif isinstance(returned, int):  # click *returns* a typer.Exit's code when not in standalone mode
            code = returned
    except typer.Exit as exc:
        code = exc.exit_code
    except typer.Abort:
        typer.echo("datasurface-job: aborted", err=True)
        code = EXIT_FAILURE
    except _CLICK_ERRORS.ClickException as exc:
        exc.show()
        code = EXIT_USAGE if isinstance(exc, _CLICK_ERRORS.UsageError) else exc.exit_code
    except (Exception, KeyboardInterrupt) as exc:  # ours (one line), Ctrl-C, or unexpected
        code = failed(exc, _state["debug"])
    return result_line(code)
