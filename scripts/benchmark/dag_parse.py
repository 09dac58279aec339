"""How long Airflow takes to parse one platform's DAG file, for a platform of N stores (default 400), with
one DAG per store and with groups (`storesPerTask`): a fresh process per parse, as the dag-processor
parses a file (Airflow's own import included once, then the DagBag over the platform's folder, timed).

Run with the Airflow environment's Python (scripts/airflow-venv.sh):

    scripts/benchmark.sh --dag-parse [--stores 400] [--stores-per-task 1,50] [--bound 10] [--deferrable]

`--deferrable`: the pod tasks deferrable and in a pool, as `deferrable: true` and `airflow.pool.name` render.

Exit 1 when a parse takes longer than `--bound` seconds.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
MODULE = REPO / "charts" / "datasurface" / "files" / "dags" / "datasurface_dags.py"

PARSE = """
import json, os, sys, time
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
from airflow.dag_processing.dagbag import DagBag
started = time.monotonic()
bag = DagBag(dag_folder=sys.argv[1])
print(json.dumps({"seconds": time.monotonic() - started, "dags": len(bag.dags), "errors": len(bag.import_errors)}))
"""


def settings(stores: int, per_task: int, deferrable: bool = False) -> dict[str, object]:
    return {**({"deferrable": True, "pool": "datasurface"} if deferrable else {}),
        "version": 1, "platform": "Big", "mode": "live", "stores": [f"S{i:03d}" for i in range(1, stores + 1)],
        "schedule": "* * * * *", "storesPerTask": per_task,
        "model": {"repo": "https://example.invalid/model.git", "ref": "main", "path": "datasurface.yaml"},
        "merge": {"host": "db", "port": 5432, "database": "merge_db", "credential": "merge"},
        "secretEnv": [{"name": "MERGE_USER", "secret": "db", "key": "merge-username"},
                      {"name": "MERGE_PASSWORD", "secret": "db", "key": "merge-password"}],
        "kubernetes": {"image": "ghcr.io/datasurface/datasurface-job:0.3.0", "namespace": "data"},
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--stores", type=int, default=400)
    p.add_argument("--stores-per-task", default="1,50", help="storesPerTask values, comma-separated")
    p.add_argument("--bound", type=float, default=10.0, help="seconds a parse may take")
    p.add_argument("--deferrable", action="store_true", help="deferrable pod tasks in a pool")
    args = p.parse_args()
    over = False
    with tempfile.TemporaryDirectory(prefix="ds-dag-parse-") as tmp:
        for per_task in (int(n) for n in args.stores_per_task.split(",") if n):
            folder = Path(tmp) / f"big{per_task}"
            folder.mkdir()
            (folder / "datasurface_dags.py").write_text(MODULE.read_text())
            (folder / "platform.json").write_text(json.dumps(settings(args.stores, per_task, args.deferrable)))
            env_home = Path(tmp) / f"home{per_task}"
            proc = subprocess.run([sys.executable, "-c", PARSE, str(folder)], capture_output=True, text=True,
                                  env={"AIRFLOW_HOME": str(env_home), "PATH": "/usr/bin:/bin"}, timeout=600)
            if proc.returncode != 0:
                print(proc.stderr[-2000:], file=sys.stderr)
                return 1
            result = json.loads(proc.stdout.strip().splitlines()[-1])
            ok = result["seconds"] <= args.bound and result["errors"] == 0
            over |= not ok
            what = ", deferrable" if args.deferrable else ""
            print(f"# DAG parse, {args.stores} stores, storesPerTask {per_task}{what}: {result['dags']} DAGs in "
                  f"{result['seconds']:.2f}s, {result['errors']} import errors "
                  f"({'ok' if ok else 'OVER'} the {args.bound:g} s bound)", flush=True)
    return 1 if over else 0


if __name__ == "__main__":
    sys.exit(main())
