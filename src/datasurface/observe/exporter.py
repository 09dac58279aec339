"""`datasurface-job exporter` (docs/monitoring.md): Prometheus metrics read from the ledgers at each scrape.

A custom collector (the official `prometheus-client`) reads every platform's `ds_batches` and `ds_runs`
on one read-only connection. Each scrape is bounded: the read runs on a daemon thread and the scrape
waits at most `scrape_timeout` seconds for it (the connection also has connect and statement timeouts
and TCP keepalives). A database that does not answer in time gives `datasurface_up 0` and no stream
series; while a stuck read is still pending, later scrapes answer `datasurface_up 0` at once instead
of piling up threads. `/healthz` answers 200 whenever the process serves (the database's state is a
metric, not a reason to restart the exporter). SIGTERM stops the server at once.

Given the model, a scrape also reads from each cdc store's source the WAL the store's replication slot
retains, in parallel with the ledgers and within the same bound; a source that does not answer is logged
and its series left out.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable, Iterable
from contextlib import suppress
from socketserver import ThreadingMixIn
from typing import Any, NamedTuple
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import psycopg2
from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from datasurface import credentials
from datasurface.cdc import slots
from datasurface.db import Endpoint, PgConnection, first_line
from datasurface.errors import DataSurfaceError
from datasurface.merge import layout
from datasurface.model import Model, load_model
from datasurface.observe.ledgers import PlatformState, read_platform

log = logging.getLogger("datasurface.observe")

STREAM_LABELS = ["platform", "store", "dataset"]
OPS = ("total", "inserted", "updated", "deleted")


def stream_metrics(states: dict[str, PlatformState]) -> list[Metric]:
    """The metric families of docs/monitoring.md for platforms that answered (platform label as given)."""
    commit = GaugeMetricFamily("datasurface_last_commit_timestamp_seconds",
                               "finished_at of the stream's last committed batch (Unix time).", labels=STREAM_LABELS)
    age = GaugeMetricFamily("datasurface_snapshot_age_seconds",
                            "Now minus snapshot_at of the last committed batch: how old the data consumers see is.",
                            labels=STREAM_LABELS)
    duration = GaugeMetricFamily("datasurface_batch_duration_seconds",
                                 "finished_at minus started_at of the last committed batch.", labels=STREAM_LABELS)
    rows = GaugeMetricFamily("datasurface_batch_rows", "Counts of the last committed batch, by op.",
                             labels=[*STREAM_LABELS, "op"])
    batch = GaugeMetricFamily("datasurface_last_batch_id", "batch_id of the last committed batch.",
                              labels=STREAM_LABELS)
    runs = CounterMetricFamily("datasurface_runs", "merge runs recorded in ds_runs, by result: ok (exit 0), "
                               "recovered (exit 10), failed (any other exit).", labels=[*STREAM_LABELS, "result"])
    in_a_row = GaugeMetricFamily("datasurface_consecutive_failed_runs",
                                 "Failed merge runs since the stream's last successful one.", labels=STREAM_LABELS)
    open_age = GaugeMetricFamily("datasurface_open_batch_age_seconds",
                                 "Age of the stream's open (uncommitted) batch; 0 when none.", labels=STREAM_LABELS)
    for platform, state in states.items():
        for s in state.streams.values():
            labels = [platform, s.store, s.dataset]
            if s.committed is not None and s.committed.finished_at is not None:
                commit.add_metric(labels, s.committed.finished_at.timestamp())
                age.add_metric(labels, state.snapshot_age(s) or 0.0)
                duration.add_metric(labels, s.committed.duration or 0.0)
                batch.add_metric(labels, s.committed.batch_id)
                for op, n in zip(OPS, s.committed.counts or (0, 0, 0, 0), strict=True):
                    rows.add_metric([*labels, op], n)
            for result, n in s.runs.items():
                runs.add_metric([*labels, result], n)
            in_a_row.add_metric(labels, s.failures_in_a_row)
            open_age.add_metric(labels, state.open_age(s))
    return [commit, age, duration, rows, batch, runs, in_a_row, open_age]


class ModelSpec(NamedTuple):
    model: str
    ref: str | None
    path: str


class SlotWatch:
    """The WAL each cdc store's replication slot retains on its source, read at scrape time. The model (where
    the cdc stores' sources are) is loaded in the background at start and every `refresh` seconds: a model that
    cannot be loaded is logged and the last one loaded kept; before the first, there are no slot figures."""

    def __init__(self, spec: ModelSpec, platforms: dict[str, str], refresh: float):
        self.spec = spec
        self.platforms = platforms  # label as given -> platform schema
        self.refresh = refresh
        self.model: Model | None = None
        self._busy: dict[slots.Source, threading.Thread] = {}
        self._errors: dict[slots.Source, str] = {}
        self._stop = threading.Event()
        self._loader = threading.Thread(target=self._load_loop, name="model-load", daemon=True)

    def start(self) -> SlotWatch:
        self._loader.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def _load_loop(self) -> None:
        last_error = ""
        while not self._stop.is_set():
            try:
                self.model = load_model(self.spec.model, self.spec.ref, self.spec.path)
                if last_error:
                    log.info("model loads again")
                last_error = ""
            except Exception as exc:  # the ledger metrics go on without slot figures
                reason = str(exc) if isinstance(exc, DataSurfaceError) else f"{type(exc).__name__}: {exc}"
                if reason != last_error:
                    log.warning("model %s: %s; slot metrics use the last model loaded (if any)", self.spec.model,
                                reason)
                last_error = reason
            self._stop.wait(self.refresh)

    def read(self, timeout: float) -> dict[tuple[str, str], int]:
        """(platform label, store) -> bytes retained, for the slots that answered within `timeout` seconds."""
        model = self.model
        if model is None:
            return {}
        per_platform = {p: slots.platform_slots(model, schema) for p, schema in self.platforms.items()}
        wanted: dict[slots.Source, set[str]] = {}
        for names in per_platform.values():
            for source, by_slot in names.items():
                wanted.setdefault(source, set()).update(by_slot)
        readings = slots.read_retained(wanted, timeout, "datasurface-job exporter", self._busy)
        out = {}
        for platform, names in per_platform.items():
            for source, by_slot in names.items():
                reading = readings[source]
                for slot, store in by_slot.items():
                    kept = reading.retained.get(slot)
                    if kept is not None:
                        out[(platform, store)] = kept
        for source, reading in readings.items():
            self._note(source, reading.error or "")
        return out

    def _note(self, source: slots.Source, error: str) -> None:
        if error and error != self._errors.get(source, ""):
            log.warning("scrape: source %s: %s; its slot metrics are left out", source.endpoint.describe(), error)
        elif not error and self._errors.get(source):
            log.info("source %s answers again", source.endpoint.describe())
        self._errors[source] = error


def slot_metric(retained: dict[tuple[str, str], int]) -> Metric:
    gauge = GaugeMetricFamily("datasurface_source_slot_retained_bytes",
                              "WAL the stream's replication slot keeps on its source (change data capture).",
                              labels=STREAM_LABELS)
    for (platform, store), n in sorted(retained.items()):
        gauge.add_metric([platform, store, ""], n)
    return gauge


class LedgerCollector(Collector):
    """Reads the ledgers of the given platforms at each collect(), within `scrape_timeout` seconds."""

    def __init__(self, platforms: list[str], endpoint: Endpoint, credential_name: str, scrape_timeout: float,
                 slot_watch: SlotWatch | None = None):
        self.platforms = {p: layout.platform_schema(p) for p in platforms}
        self.slot_watch = slot_watch
        self.endpoint = endpoint
        self.credential_name = credential_name
        self.scrape_timeout = scrape_timeout
        self._conn: PgConnection | None = None
        self._pending: threading.Thread | None = None
        self._last_error = ""

    def _connect(self) -> PgConnection:
        cred = credentials.resolve(self.credential_name)
        timeout_ms = int(self.scrape_timeout * 1000)
        conn = psycopg2.connect(
            host=self.endpoint.host, port=self.endpoint.port, dbname=self.endpoint.database,
            user=cred.user, password=cred.password, application_name="datasurface-job exporter",
            connect_timeout=max(2, int(self.scrape_timeout)), keepalives=1, keepalives_idle=10,
            keepalives_interval=5, keepalives_count=2,
            options=f"-c statement_timeout={timeout_ms} -c lock_timeout={timeout_ms} "
                    f"-c idle_in_transaction_session_timeout={timeout_ms * 4} -c default_transaction_read_only=on",
        )
        conn.autocommit = False
        return conn

    def _read(self) -> dict[str, PlatformState]:
        if self._conn is None or self._conn.closed:
            self._conn = self._connect()
        try:
            states = {p: read_platform(self._conn, schema) for p, schema in self.platforms.items()}
            self._conn.rollback()
            return states
        except BaseException:
            with suppress(Exception):
                self._conn.close()
            self._conn = None
            raise

    def read(self) -> dict[str, PlatformState] | None:
        """The platforms' states, or None when the database did not answer within the bound."""
        if self._pending is not None and self._pending.is_alive():
            self._note("the previous read is still waiting for the database")
            return None
        result: dict[str, Any] = {}

        def work() -> None:
            try:
                result["states"] = self._read()
            except (psycopg2.Error, DataSurfaceError) as exc:
                result["error"] = first_line(exc) if isinstance(exc, psycopg2.Error) else str(exc)
            except Exception as exc:  # a scrape never kills the exporter
                result["error"] = f"{type(exc).__name__}: {exc}"

        thread = threading.Thread(target=work, name="ledger-read", daemon=True)
        thread.start()
        thread.join(self.scrape_timeout)
        if thread.is_alive():
            self._pending = thread
            self._note(f"no answer within {self.scrape_timeout:g}s")
            return None
        if "error" in result:
            self._note(result["error"])
            return None
        if self._last_error:
            log.info("merge database answers again")
        self._last_error = ""
        return result["states"]  # type: ignore[no-any-return]

    def _note(self, reason: str) -> None:
        if reason != self._last_error:
            log.warning("scrape: merge database %s: %s", self.endpoint.describe(), reason)
        self._last_error = reason

    def collect(self) -> Iterable[Metric]:
        started = time.monotonic()
        retained: dict[tuple[str, str], int] = {}
        slot_read = None
        if self.slot_watch is not None:  # the sources are read while the ledgers are
            watch = self.slot_watch
            slot_read = threading.Thread(target=lambda: retained.update(watch.read(self.scrape_timeout)),
                                         name="slot-scrape", daemon=True)
            slot_read.start()
        states = self.read()
        if slot_read is not None:
            slot_read.join(max(0.0, started + self.scrape_timeout + 0.5 - time.monotonic()))
        up = GaugeMetricFamily("datasurface_up", "1 when the merge database answered this scrape.",
                               labels=["platform"])
        for platform in self.platforms:
            up.add_metric([platform], 0 if states is None else 1)
        yield up
        if states is not None:
            yield from stream_metrics(states)
        if slot_read is not None and not slot_read.is_alive():
            yield slot_metric(retained)
        took = GaugeMetricFamily("datasurface_scrape_duration_seconds",
                                 "Seconds this scrape spent reading the ledgers.")
        took.add_metric([], time.monotonic() - started)
        yield took


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True
    allow_reuse_address = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        return


def wsgi_app(registry: CollectorRegistry) -> Callable[..., Iterable[bytes]]:
    """GET /metrics (text exposition format), GET /healthz; anything else 404."""
    metrics = make_wsgi_app(registry)

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/metrics":
            return metrics(environ, start_response)  # type: ignore[no-any-return]
        if path == "/healthz":
            start_response("200 OK", [("Content-Type", "text/plain; charset=utf-8")])
            return [b"ok\n"]
        start_response("404 Not Found", [("Content-Type", "text/plain; charset=utf-8")])
        return [b"not found: try /metrics or /healthz\n"]

    return app


class _Stop(BaseException):
    """Raised by the SIGTERM handler to leave serve_forever at once."""


def registry_for(collector: LedgerCollector) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    ProcessCollector(registry=registry)
    return registry


def run_exporter(*, platforms: list[str], merge: Endpoint, merge_credential: str, address: str, port: int,
                 scrape_timeout: float, model: ModelSpec | None = None, model_refresh: float = 300.0) -> None:
    """`model`: where the cdc stores' sources are, for datasurface_source_slot_retained_bytes (none without)."""
    if not platforms:
        raise DataSurfaceError("exporter: name at least one --platform")
    credentials.resolve(merge_credential)  # fail at start, not at the first scrape
    watch = None if model is None else SlotWatch(model, {p: layout.platform_schema(p) for p in platforms},
                                                 model_refresh).start()
    collector = LedgerCollector(platforms, merge, merge_credential, scrape_timeout, watch)
    server = make_server(address, port, wsgi_app(registry_for(collector)), server_class=_Server,
                         handler_class=_QuietHandler)

    def stop(signum: int, frame: Any) -> None:
        raise _Stop

    previous = signal.signal(signal.SIGTERM, stop)
    host, bound = str(server.server_address[0]), int(server.server_address[1])
    print(f"datasurface-job exporter: serving http://{host}:{bound}/metrics for {', '.join(platforms)} "
          f"({merge.describe()})", flush=True)
    try:
        server.serve_forever(poll_interval=0.5)
    except _Stop:
        print("datasurface-job exporter: stopped (SIGTERM)", flush=True)
    finally:
        signal.signal(signal.SIGTERM, previous)
        server.server_close()
        if watch is not None:
            watch.stop()

