"""The whole at scale, small: a platform of a few stores in two groups on a one-minute schedule in the
emulated release (scale.py; `scripts/scale.sh` runs the full measurement). Every stream gets batches in a
scheduled cycle, and the data age and CPU figures are produced and sane."""

from __future__ import annotations

import pytest

from tests.system.release import AirflowApi
from tests.system.scale import AGE_TARGET_S, CPUACCT, measure, scaled_release, store_names

pytestmark = pytest.mark.timeout(900)

STORES, PER_TASK = 6, 3


@pytest.mark.skipif(not (CPUACCT / "cgroup.procs").exists(),
                    reason=f"no cgroup v1 cpuacct hierarchy at {CPUACCT}: the CPU cannot be measured")
def test_a_small_platform_at_scale() -> None:
    stores = store_names(STORES)
    with scaled_release(stores, PER_TASK, 1) as release:
        figures = measure(release, stores, PER_TASK, 1, minutes=1.1, warmup_timeout=300)
        api = AirflowApi(release)
        dags = {d["dag_id"] for d in api.call("GET", "/api/v2/dags?limit=100")["dags"]}
        run = api.runs("scale__group1_ingestion")[-1]
        merge = api.task_instances("scale__group1_ingestion", run["dag_run_id"])["merge"]
        triggerer = release.pods["triggerer"].container()
        assert triggerer.running, triggerer.logs()[-3000:]
    print(figures.report())
    assert dags == {"scale__group1_ingestion", "scale__group2_ingestion", "scale_infrastructure"}
    assert merge["pool"] == "datasurface"  # the chart's job pool, made by the scheduler's init container
    assert figures.streams == STORES, figures.report()  # a scheduled cycle merged every stream
    assert figures.failed_runs == 0
    assert set(figures.age_p95_s) == set(stores) and figures.scrapes >= 5
    # a batch a minute: every stream's data is younger than two schedule periods plus a run
    assert all(0 <= age < AGE_TARGET_S for age in figures.age_p95_s.values()), figures.age_p95_s
    # the jobs of two scheduled cycles (two groups each) ran, each merging its stores
    assert figures.jobs >= 2 and figures.jobs_cpu_s > 0.1
    assert 0.1 < figures.airflow_cpu_s < figures.window_s * 2  # Airflow is busy, but no more than the machine
    assert figures.machine_busy_cores >= figures.airflow_cores + figures.jobs_cores - 0.05
