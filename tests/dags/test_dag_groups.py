"""`storesPerTask`: a platform's stores in groups (in the listed order), one ingestion DAG per group whose
merge task runs every store of the group in one job; default 1 keeps one DAG per store."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from dag_support import dag_bag, example_settings, write_platform
from psycopg2 import sql
from test_dag_runs import dag_runs, load_dags, local_platform, source, ti_states  # noqa: F401 (fixture)

pytestmark = pytest.mark.timeout(600, method="thread")

STORES = ["S1", "S2", "S3", "S4", "S5"]


def test_stores_are_grouped_in_the_listed_order(dags_module: ModuleType) -> None:
    s = dags_module.parse_settings(example_settings(stores=STORES, storesPerTask=2, parallelStores=2))
    assert s.groups == [("S1", "S2"), ("S3", "S4"), ("S5",)]
    dags = dags_module.build_dags(s)
    assert sorted(dags) == ["yellowlive__group1_ingestion", "yellowlive__group2_ingestion",
                            "yellowlive__group3_ingestion", "yellowlive_infrastructure"]
    # --parallel always: an image too old for groups refuses it (exit 2) instead of merging
    # only the last --store
    assert s.group_merge_args(("S1", "S2")) == ["merge", "--platform", "YellowLive", "--mode", "live",
                                                "--parallel", "2", "--store", "S1", "--store", "S2"]
    assert s.group_merge_args(("S5",))[5:] == ["--parallel", "2", "--store", "S5"]  # a group of one too
    for k, stores in enumerate(s.groups, start=1):
        task = dags[f"yellowlive__group{k}_ingestion"].get_task("merge")
        assert task.arguments == s.group_merge_args(stores)
        assert task.labels["datasurface.io/group"] == str(k)
        assert set(dags[f"yellowlive__group{k}_ingestion"].task_ids) == {"merge", "retrigger", "done"}
    # a store added at the end leaves the earlier groups as they were
    more = dags_module.parse_settings(example_settings(stores=[*STORES, "S6", "S7"], storesPerTask=2))
    assert more.groups[:2] == s.groups[:2] and more.groups[2:] == [("S5", "S6"), ("S7",)]


def test_one_store_per_task_keeps_a_dag_per_store(dags_module: ModuleType) -> None:
    explicit = dags_module.build_dags(dags_module.parse_settings(example_settings(stores=STORES, storesPerTask=1)))
    default = dags_module.build_dags(dags_module.parse_settings(example_settings(stores=STORES)))
    assert sorted(explicit) == sorted(default) == sorted(
        [f"yellowlive__{s}_ingestion" for s in STORES] + ["yellowlive_infrastructure"])
    assert explicit["yellowlive__S2_ingestion"].get_task("merge").arguments == \
        ["merge", "--platform", "YellowLive", "--mode", "live", "--store", "S2"]


def test_a_group_tasks_time_limit_fits_the_group(dags_module: ModuleType) -> None:
    """executionTimeoutSeconds for each round of parallelStores stores, at most a week; setup keeps it."""
    for runner in ("kubernetes", "local"):
        s = dags_module.parse_settings(example_settings(stores=STORES, storesPerTask=3, parallelStores=2,
                                                        executionTimeoutSeconds=600, runner=runner))
        dags = dags_module.build_dags(s)
        assert dags["yellowlive__group1_ingestion"].get_task("merge").execution_timeout == timedelta(seconds=1200)
        assert dags["yellowlive__group2_ingestion"].get_task("merge").execution_timeout == timedelta(seconds=600)
        assert dags["yellowlive_infrastructure"].get_task("setup").execution_timeout == timedelta(seconds=600)
    s = dags_module.parse_settings(example_settings(stores=[f"S{i}" for i in range(400)], storesPerTask=400,
                                                    executionTimeoutSeconds=86400))
    assert s.group_timeout_seconds(400) == 7 * 24 * 3600


@pytest.mark.parametrize("key,value,problem", [
    ("storesPerTask", 0, "storesPerTask: must be between 1 and 1000 (got 0)"),
    ("storesPerTask", "50", "storesPerTask: must be an integer"),
    ("parallelStores", 0, "parallelStores: must be between 1 and 1000 (got 0)"),
])
def test_bad_group_settings_are_refused(dags_module: ModuleType, key: str, value: Any, problem: str) -> None:
    with pytest.raises(dags_module.PlatformSettingsError, match=problem.replace("(", r"\(").replace(")", r"\)")):
        dags_module.parse_settings(example_settings(**{key: value}))


def test_a_group_pod(tmp_path: Path, kubeconfig: Path) -> None:
    from kubernetes.client import ApiClient

    bag = dag_bag(write_platform(tmp_path / "dags" / "yellowlive",
                                 example_settings(stores=STORES, storesPerTask=5)).parent)
    assert bag.import_errors == {}
    pod = ApiClient().sanitize_for_serialization(
        bag.dags["yellowlive__group1_ingestion"].get_task("merge").build_pod_request_obj())
    assert pod["metadata"]["name"].startswith("ds-yellowlive-group1-")
    assert pod["metadata"]["labels"]["datasurface.io/group"] == "1"
    assert "datasurface.io/store" not in pod["metadata"]["labels"]
    assert pod["spec"]["containers"][0]["args"] == ["merge", "--platform", "YellowLive", "--mode", "live",
                                                    "--parallel", "1", *[a for s in STORES for a in ("--store", s)]]


def _group_model(folder: Path, dbs: Any) -> Path:
    """Stores Store1, Store2, Store3, each ingesting the source's customers table (JSON is YAML)."""
    dataset = {"name": "customers", "primaryKey": ["id"],
               "columns": [{"name": "id", "type": "varchar(20)", "nullable": False},
                           {"name": "firstname", "type": "varchar(100)"}]}
    source_ = {"host": dbs.host, "port": dbs.port, "database": dbs.source, "credential": "source"}
    model = {"apiVersion": "datasurface/v1", "kind": "Model",
             "stores": [{"name": name, "source": source_, "datasets": [dataset]}
                        for name in ("Store1", "Store2", "Store3")]}
    folder.mkdir()
    (folder / "datasurface.yaml").write_text(json.dumps(model))
    return folder


def _committed(dbs: Any, schema: str) -> list[tuple[str, int]]:
    with dbs.connect(dbs.merge) as conn, conn.cursor() as cur:
        cur.execute(sql.SQL("SELECT store, batch_id FROM {} WHERE status = 'committed' ORDER BY 1, 2").format(
            sql.Identifier(schema, "ds_batches")))
        rows = cur.fetchall()
    conn.close()
    return rows


def test_a_group_dag_merges_its_stores_and_reruns_on_10(airflow_db: Path, source: Any,  # noqa: F811
                                                        tmp_path: Path, dags_subfolder: Callable[[str], Path]) -> None:
    """The local runner: group 1 (Store1, Store2) commits both; after Store2's run was killed mid-batch the
    group finishes it and exits 10, so the DAG triggers itself; group 2 holds Store3 alone."""
    model = _group_model(tmp_path / "model", source)
    settings = local_platform("RunGroups", source, model, stores=["Store1", "Store2", "Store3"], storesPerTask=2)
    dags = load_dags(dags_subfolder("rungroups"), settings)
    assert sorted(dags) == ["rungroups__group1_ingestion", "rungroups__group2_ingestion", "rungroups_infrastructure"]
    group1 = dags["rungroups__group1_ingestion"]

    first = group1.test()
    assert ti_states(first) == {"merge": "success", "done": "success", "retrigger": "skipped"}
    assert _committed(source, "rungroups") == [("Store1", 1), ("Store2", 1)]

    env = {**os.environ, "DATASURFACE_TEST_KILL_AT": "after_ingest", "DATASURFACE_MODEL": str(model),
           "DATASURFACE_MERGE_HOST": source.host, "DATASURFACE_MERGE_PORT": str(source.port),
           "DATASURFACE_MERGE_DATABASE": source.merge, "DATASURFACE_MERGE_CREDENTIAL": "merge"}
    killed = subprocess.run(["datasurface-job", "merge", "--platform", "RunGroups", "--mode", "live",
                             "--store", "Store2"], env=env, capture_output=True, text=True, timeout=120)
    assert killed.returncode == -signal.SIGKILL, killed.stderr

    second = group1.test()
    assert ti_states(second) == {"merge": "skipped", "done": "skipped", "retrigger": "success"}
    assert _committed(source, "rungroups") == [("Store1", 1), ("Store1", 2), ("Store2", 1), ("Store2", 2)]
    assert len(dag_runs(group1.dag_id)) == 3  # the two runs and the one retrigger queued

    third = dags["rungroups__group2_ingestion"].test()
    assert ti_states(third) == {"merge": "success", "done": "success", "retrigger": "skipped"}
    assert ("Store3", 1) in _committed(source, "rungroups")
