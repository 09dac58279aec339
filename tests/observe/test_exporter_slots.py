"""datasurface_source_slot_retained_bytes: the WAL a cdc stream's slot keeps on its source, read at scrape
time from the sources the model names; a source that does not answer leaves its series out and never holds
up or fails the scrape."""

from __future__ import annotations

import copy
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.cdc import allow_replication, cdc_model, drop_slots
from tests.support.engine import PLATFORM, SMALL, create_source_tables, merge_args, model_dict, run_job, write_model
from tests.support.exporter import scrape, start_exporter, wait_for

SLOTS = "datasurface_source_slot_retained_bytes"


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A TCP port that accepts connections and never says a word (a hung source)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    yield sock.getsockname()[1]
    sock.close()


def test_the_slot_metric_follows_the_wal_and_a_silent_source_is_left_out(
        dbs: Any, tmp_path: Path, request: pytest.FixtureRequest, silent_server: int) -> None:
    allow_replication(dbs)
    request.addfinalizer(lambda: drop_slots(dbs))
    src = dbs.connect(dbs.source)
    create_source_tables(src, SMALL)
    doc = cdc_model(model_dict(dbs.host, dbs.port, dbs.source, datasets=SMALL))
    hung = copy.deepcopy(doc["stores"][0])
    hung["name"] = "Hung"
    hung["source"].update({"host": "127.0.0.1", "port": silent_server})
    doc["stores"].append(hung)
    model = write_model(tmp_path / "model", doc)
    assert run_job(merge_args(model, PLATFORM, "live", dbs), dbs.env).returncode == 0

    plain = start_exporter(dbs, [PLATFORM])  # no model: no slot figures
    try:
        assert SLOTS not in scrape(plain)
    finally:
        plain.stop()

    exp = start_exporter(dbs, [PLATFORM], "--model", str(model), "--scrape-timeout", "1.5")
    try:
        def retained() -> dict[Any, float]:
            return scrape(exp).get(SLOTS, ("", {}))[1]  # type: ignore[no-any-return]

        first = wait_for(retained)  # the model loads in the background
        stream = frozenset({"platform": PLATFORM, "store": "Store1", "dataset": ""}.items())
        assert set(first) == {stream}  # the silent source's store is left out
        with src.cursor() as cur:
            cur.execute("INSERT INTO pairs (region, code, note) SELECT 'r', g, repeat('x', 500) "
                        "FROM generate_series(1, 4000) g")
        src.commit()
        t0 = time.monotonic()
        fams = scrape(exp)
        took = time.monotonic() - t0
        assert took < 3.5, took  # bounded by the scrape timeout, however long the silent source keeps quiet
        assert fams["datasurface_up"][1] == {frozenset({"platform": PLATFORM}.items()): 1.0}
        assert set(fams[SLOTS][1]) == {stream}
        # the test servers commit asynchronously: the WAL is written a moment after the commit returns
        grown = wait_for(lambda: retained().get(stream, 0) >= first[stream] + 2_000_000, timeout=10)
        after = retained()[stream]
        assert grown, after
        with src.cursor() as cur:
            cur.execute("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::bigint FROM pg_replication_slots "
                        "WHERE slot_name = 'ds_yellow_store1'")
            now = cur.fetchone()[0]
        src.rollback()
        assert after <= now
    finally:
        exp.stop()
        src.close()
