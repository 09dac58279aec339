"""Helpers for the merge engine tests: a two-dataset source covering every model type, random
snapshot sequences, an oracle for counts, readers of the merge tables, the job run as a process and its
one-line errors, and the `world` fixtures' first live batch (platform Yellow)."""

from __future__ import annotations

import datetime as dt
import decimal
import json
import os
import random
import signal
import subprocess
import sys
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

COMMON_COLUMNS = [  # types both source kinds hold
    ("id", "integer"), ("c_smallint", "smallint"), ("c_integer", "integer"), ("c_bigint", "bigint"),
    ("c_numeric_ps", "numeric(12,3)"), ("c_numeric", "numeric"), ("c_real", "real"),
    ("c_double", "double precision"), ("c_boolean", "boolean"), ("c_varchar", "varchar(30)"),
    ("c_char", "char(5)"), ("c_text", "text"), ("c_date", "date"), ("c_timestamp", "timestamp"),
    ("c_timestamptz", "timestamptz"), ("c_time", "time"), ("c_uuid", "uuid"), ("c_jsonb", "jsonb"),
    ("c_bytea", "bytea"), ("c_json", "json"),
    ("order", "varchar(30)"),  # a keyword as a model name
]
ALLTYPES_COLUMNS = [*COMMON_COLUMNS,  # and those only PostgreSQL sources hold
                    ("c_interval", "interval"), ("c_inet", "inet"), ("c_cidr", "cidr"), ("c_macaddr", "macaddr"),
                    ("c_int_arr", "integer[]"), ("c_num_arr", "numeric(12,2)[]"),
                    ("c_float_arr", "double precision[]"), ("c_text_arr", "text[]"), ("c_jsonb_arr", "jsonb[]")]
# read as text by the oracle: values are compared as the source shows them (psycopg2 would make 1.0 and
# 1.00, '1 day' and '24 hours', {"a":1} and {"a": 1} equal)
AS_TEXT = ("json", "jsonb", "interval")
PAIRS_COLUMNS = [("region", "varchar(10)"), ("code", "integer"), ("note", "text"), ("amount", "numeric(10,2)")]
DATASETS = {"alltypes": (ALLTYPES_COLUMNS, ("id",)), "pairs": (PAIRS_COLUMNS, ("region", "code"))}
COMMON_DATASETS = {"alltypes": (COMMON_COLUMNS, ("id",)), "pairs": (PAIRS_COLUMNS, ("region", "code"))}
Datasets = dict[str, tuple[list[tuple[str, str]], tuple[str, ...]]]


def model_dict(host: str, port: int, database: str, *, store: str = "Store1",
               consistency: str = "multi_dataset", datasets: dict[str, Any] | None = None) -> dict[str, Any]:
    datasets = DATASETS if datasets is None else datasets
    return {
        "apiVersion": "datasurface/v1",
        "kind": "Model",
        "stores": [{
            "name": store,
            "consistency": consistency,
            "source": {"host": host, "port": port, "database": database, "credential": "source"},
            "datasets": [
                {"name": name, "primaryKey": list(key),
                 "columns": [{"name": c, "type": t, **({"nullable": False} if c in key else {})} for c, t in cols]}
                for name, (cols, key) in datasets.items()
            ],
        }],
    }


def one_dataset_model(dbs: Any, store: str, dataset: str, columns: list[tuple[str, str]],
                      key: tuple[str, ...] = ("id",)) -> dict[str, Any]:
    """A model of one store with one dataset on `dbs`' source database (all columns nullable but the key)."""
    return {"apiVersion": "datasurface/v1", "kind": "Model",
            "stores": [{"name": store, "source": {"host": dbs.host, "port": dbs.port, "database": dbs.source,
                                                  "credential": "source"},
                        "datasets": [{"name": dataset, "primaryKey": list(key),
                                      "columns": [{"name": c, "type": t} for c, t in columns]}]}]}


def write_model(folder: Path, model: dict[str, Any]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "datasurface.yaml").write_text(yaml.safe_dump(model, sort_keys=False))
    return folder


def create_source_tables(conn: Any, datasets: dict[str, Any] | None = None) -> None:
    datasets = DATASETS if datasets is None else datasets
    with conn.cursor() as cur:
        for name, (cols, key) in datasets.items():
            defs = ", ".join(f'"{c}" {t}' for c, t in cols)
            cur.execute(f'CREATE TABLE "{name}" ({defs}, PRIMARY KEY ({", ".join(key)}))')
    conn.commit()


# --- random snapshots -----------------------------------------------------------------------------

TEXT_CHOICES = [None, "", "x", "hello", "Ünïcode ✓", "with\ttab", "quote'\"", "NULL"]


def _value(rng: random.Random, typ: str) -> Any:
    if rng.random() < 0.15:
        return None
    if typ in LITERALS:  # as text the source parses (several spellings of one value among them)
        return rng.choice(LITERALS[typ])
    if typ in ("smallint",):
        return rng.randint(-32768, 32767)
    if typ == "integer":
        return rng.randint(-(2**31), 2**31 - 1)
    if typ == "bigint":
        return rng.randint(-(2**63), 2**63 - 1)
    if typ.startswith("numeric("):
        return decimal.Decimal(rng.randint(-10**8, 10**8)) / 1000 if "3" in typ else \
            decimal.Decimal(rng.randint(-10**6, 10**6)) / 100
    if typ == "numeric":
        return decimal.Decimal(str(rng.randint(-10**20, 10**20))) / decimal.Decimal(10 ** rng.randint(0, 10))
    if typ == "real":
        return rng.randint(-1000, 1000) / 4  # exactly representable
    if typ == "double precision":
        return rng.randint(-10**9, 10**9) / 1024
    if typ == "boolean":
        return rng.random() < 0.5
    if typ.startswith("varchar") or typ == "text":
        return rng.choice(TEXT_CHOICES[1:]) + str(rng.randint(0, 3)) if rng.random() < 0.5 else rng.choice(TEXT_CHOICES)
    if typ.startswith("char("):
        return "".join(rng.choice("abcde") for _ in range(5))
    if typ == "date":
        return dt.date(2000, 1, 1) + dt.timedelta(days=rng.randint(0, 20000))
    if typ == "timestamp":
        return dt.datetime(2000, 1, 1) + dt.timedelta(seconds=rng.randint(0, 10**9),
                                                      microseconds=rng.randint(0, 999999))
    if typ == "timestamptz":
        return dt.datetime(2000, 1, 1, tzinfo=dt.UTC) + dt.timedelta(seconds=rng.randint(0, 10**9))
    if typ == "time":
        return dt.time(rng.randint(0, 23), rng.randint(0, 59), rng.randint(0, 59), rng.randint(0, 999999))
    if typ == "uuid":
        return str(uuid.UUID(int=rng.getrandbits(128)))
    if typ == "jsonb":
        return json.dumps(rng.choice([{"a": rng.randint(0, 5)}, [1, 2, "x"], "s", 3, None, {"n": {"m": [True]}}]))
    if typ == "bytea":
        return bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 6)))
    raise ValueError(typ)


LITERALS = {
    "json": ['{"a":1}', '{"a": 1}', '{"a": 1.0}', '[1, 2]', '"s"', 'null', '{"b": 1, "a": 2}', '{"a": 2, "b": 1}'],
    "interval": ["1 day", "24 hours", "1 mon", "30 days", "00:00:01.5", "-1 year", "0"],
    "inet": ["10.0.0.1", "10.0.0.1/32", "10.0.0.1/24", "::1", "192.168.0.0/16", "2001:db8::1/64"],
    "cidr": ["10.0.0.0/8", "10/8", "192.168.1.0/24", "2001:db8::/32"],
    "macaddr": ["08:00:2b:01:02:03", "08-00-2B-01-02-03", "0800.2b01.0204"],
    "integer[]": ["{}", "{1,2}", "{2,1}", "{1,NULL}", "{NULL}", "{-2147483648}"],
    "numeric(12,2)[]": ["{1.5}", "{1.50}", "{1}", "{NULL,0}", "{}"],
    "double precision[]": ["{0}", "{-0}", "{1.5,NaN}", "{Infinity}", "{0.1}"],
    "text[]": ["{}", "{a,b}", '{"a b",""}', '{NULL,"NULL"}', '{"Ünïcode ✓","quo\\"te"}', "{b,a}"],
    "jsonb[]": ['{"{\\"a\\": 1}"}', '{"{\\"a\\": 1.0}"}', '{"[1, 2]",NULL}', "{}"],
}


def _key(rng: random.Random, name: str) -> tuple[Any, ...]:
    if name == "alltypes":
        return (rng.randint(1, 120),)
    return (rng.choice(["north", "south", "east", "west", ""]), rng.randint(1, 15))


def random_row(rng: random.Random, name: str, key: tuple[Any, ...], datasets: Datasets = DATASETS) -> tuple[Any, ...]:
    cols, keycols = datasets[name]
    return key + tuple(_value(rng, t) for c, t in cols if c not in keycols)


def next_snapshot(rng: random.Random, prev: dict[str, dict[tuple[Any, ...], tuple[Any, ...]]],
                  removed: dict[str, set[tuple[Any, ...]]], datasets: Datasets = DATASETS
                  ) -> dict[str, dict[tuple[Any, ...], tuple[Any, ...]]]:
    """Deletes, updates (one or all values; NULL/''/value flips), inserts and re-adds of deleted keys."""
    snapshot = {}
    for name in datasets:
        rows = dict(prev.get(name, {}))
        cols, keycols = datasets[name]
        for k in list(rows):
            r = rng.random()
            if r < 0.12:
                del rows[k]
                removed[name].add(k)
            elif r < 0.35:
                row = list(rows[k])
                i = rng.randrange(len(keycols), len(cols))
                typ = cols[i][1]
                row[i] = rng.choice([None, "", "x"]) if typ in ("text", "varchar(30)") else _value(rng, typ)
                rows[k] = tuple(row)
        for _ in range(rng.randint(0, 8)):
            k = _key(rng, name)
            if k not in rows:
                rows[k] = random_row(rng, name, k, datasets)
        for k in sorted(removed[name]):
            if k not in rows and rng.random() < 0.3:  # delete, then re-add
                rows[k] = random_row(rng, name, k, datasets)
                removed[name].discard(k)
        snapshot[name] = rows
    return snapshot


def load_snapshot(conn: Any, snapshot: dict[str, dict[tuple[Any, ...], tuple[Any, ...]]]) -> None:
    from psycopg2.extras import execute_values

    with conn.cursor() as cur:
        for name, rows in snapshot.items():
            cols = [c for c, _ in DATASETS[name][0]]
            cur.execute(f'TRUNCATE "{name}"')
            if rows:
                quoted = ", ".join(f'"{c}"' for c in cols)
                execute_values(cur, f'INSERT INTO "{name}" ({quoted}) VALUES %s', list(rows.values()))
    conn.commit()


# --- reading results ------------------------------------------------------------------------------

def _norm(v: Any) -> Any:
    return bytes(v) if isinstance(v, memoryview) else v


def fetch(conn: Any, relation: str, name: str, where: str = "", params: tuple[Any, ...] = (),
          datasets: Datasets = DATASETS) -> list[tuple[Any, ...]]:
    cols, key = datasets[name]
    # jsonb as text: psycopg2 reads both SQL NULL and JSON null as None, which would hide a real change
    colsql = ", ".join(f'"{c}"::text' if t in AS_TEXT or t.endswith("[]") else f'"{c}"' for c, t in cols)
    with conn.cursor() as cur:
        cur.execute(f"SELECT {colsql} FROM {relation} {where} ORDER BY {', '.join(key)}", params)
        rows = [tuple(_norm(v) for v in r) for r in cur.fetchall()]
    conn.rollback()
    return rows


def oracle_counts(before: list[tuple[Any, ...]], after: list[tuple[Any, ...]], nkey: int) -> dict[str, int]:
    b = {r[:nkey]: r[nkey:] for r in before}
    a = {r[:nkey]: r[nkey:] for r in after}
    return {
        "total": len(a),
        "inserted": sum(1 for k in a if k not in b),
        "updated": sum(1 for k in a if k in b and a[k] != b[k]),
        "deleted": sum(1 for k in b if k not in a),
    }


def merge_state(conn: Any, schema: str) -> dict[str, Any]:
    """Everything in a platform schema (tables' rows and the ledger), to compare before/after; not the run
    history (ds_runs, ds_run_totals), which records every run, failed ones too."""
    state: dict[str, Any] = {}
    with conn.cursor() as cur:
        cur.execute("""SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                        WHERE n.nspname = %s AND c.relkind IN ('r', 'v')
                          AND c.relname NOT IN ('ds_runs', 'ds_run_totals')
                        ORDER BY 1""", (schema,))
        for (rel,) in cur.fetchall():
            cur.execute(f'SELECT * FROM "{schema}"."{rel}"')
            state[rel] = sorted(tuple(map(repr, map(_norm, r))) for r in cur.fetchall())
    conn.rollback()
    return state


# --- running the job as a real process ------------------------------------------------------------

def run_job(args: list[str], env: dict[str, str], extra_env: dict[str, str] | None = None,
            timeout: float = 120) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, **env, **(extra_env or {})}
    return subprocess.run([sys.executable, "-m", "datasurface.cli", *args], env=full_env, capture_output=True,
                          text=True, timeout=timeout)


def merge_args(model: Path, platform: str, mode: str, dbs: Any, store: str = "Store1") -> list[str]:
    return ["merge", "--model", str(model), "--platform", platform, "--mode", mode, "--store", store,
            *dbs.merge_args()]


def merge_both_and_check(merge: Any, model: Path, endpoint: Any, expected: dict[str, list[list[Any]]], n: int,
                         datasets: Datasets = DATASETS) -> None:
    """Batch n on the oracle platforms (OracleLive, OracleForensic) equals the oracle: tables, views, every
    forensic as-of of batches 1..n, and the ledger's counts per dataset."""
    from datasurface.engine import run_merge
    from datasurface.errors import EXIT_OK

    for platform, mode in (("OracleLive", "live"), ("OracleForensic", "forensic")):
        code = run_merge(model=str(model), model_ref=None, model_path="datasurface.yaml", platform=platform,
                         mode=mode, store="Store1", merge=endpoint, merge_credential="merge")
        assert code == EXIT_OK
    for name, (_cols, key) in datasets.items():
        want = expected[name][n]
        table = f"store1_{name}"
        assert fetch(merge, f"oraclelive.{table}", name, datasets=datasets) == want, f"live table, batch {n}"
        assert fetch(merge, f"oraclelive.{table}_current", name, datasets=datasets) == want, f"live view, batch {n}"
        assert fetch(merge, f"oracleforensic.{table}_current", name, datasets=datasets) == want, \
            f"forensic view, batch {n}"
        for m in range(1, n + 1):
            as_of = fetch(merge, f"oracleforensic.{table}", name,
                          "WHERE ds_batch_in <= %s AND %s < ds_batch_out", (m, m), datasets)
            assert as_of == expected[name][m], f"forensic as of {m} after batch {n}"
        oracle = oracle_counts(expected[name][n - 1], want, len(key))
        for schema in ("oraclelive", "oracleforensic"):
            with merge.cursor() as cur:
                cur.execute(f"""SELECT rows_total, rows_inserted, rows_updated, rows_deleted
                                  FROM {schema}.ds_batch_datasets WHERE batch_id = %s AND dataset = %s""",
                            (n, name))
                got = dict(zip(("total", "inserted", "updated", "deleted"), cur.fetchone(), strict=True))
            merge.rollback()
            assert got == oracle, f"{schema} counts of {name}, batch {n}"


def ctrl_c_when(job: subprocess.Popen[str], reached: Callable[[], None], timeout: float = 60) -> None:
    """Ctrl-C (SIGINT) to a running job once `reached` returns: it stops as interrupted (exit 130, one line,
    the result line) within `timeout`. The job is killed whatever happens."""
    try:
        reached()
        os.kill(job.pid, signal.SIGINT)
        out, err = job.communicate(timeout=timeout)
    finally:
        if job.poll() is None:
            job.kill()
            job.wait()
    assert job.returncode == 130, out + err
    assert err.strip().splitlines()[-1] == "datasurface-job: interrupted", err
    assert out.strip().splitlines()[-1] == "DATASURFACE_RESULT_CODE=130"


PLATFORM, SCHEMA = "Yellow", "yellow"
SMALL = {"pairs": DATASETS["pairs"]}


def first_live_batch(dbs: Any, tmp_path: Path) -> Iterator[dict[str, Any]]:
    """The `world` fixture's: a source with data, a model and one committed live batch."""
    source = dbs.connect(dbs.source)
    create_source_tables(source, SMALL)
    rng = random.Random(5)
    snapshot = next_snapshot(rng, {}, defaultdict(set))
    load_snapshot(source, {"pairs": snapshot["pairs"]})
    model_doc = model_dict(dbs.host, dbs.port, dbs.source, datasets=SMALL)
    model = write_model(tmp_path / "model", model_doc)
    first = run_job(merge_args(model, PLATFORM, "live", dbs), dbs.env)
    assert first.returncode == 0, first.stderr
    merge = dbs.connect(dbs.merge)
    yield {"dbs": dbs, "src": source, "mrg": merge, "model": model, "doc": model_doc, "tmp": tmp_path}
    source.close()
    merge.close()


def on_every_version() -> Any:
    """For a module: `world = on_every_version()` runs its `world` tests on PostgreSQL 15 and on 18."""

    @pytest.fixture
    def world(world_each: dict[str, Any]) -> dict[str, Any]:
        return world_each

    return world


def assert_one_line_error(proc: subprocess.CompletedProcess[str], *fragments: str, code: int = 1) -> None:
    assert proc.returncode == code, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("datasurface-job: error: "), proc.stderr
    for f in fragments:
        assert f in last, last
    assert proc.stdout.strip().splitlines()[-1] == f"DATASURFACE_RESULT_CODE={code}"
