"""A store on an external MySQL needs nothing in the chart but its credential entry (and the model):
examples/mysql/values-mysql-source.yaml renders, and the job pods get exactly the model's credential."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from datasurface.credentials import env_prefix
from datasurface.model import parse_model
from tests.support.helm import REPO_ROOT, find

EXAMPLE = REPO_ROOT / "examples" / "mysql"


def test_example_model_is_a_mysql_store() -> None:
    path = EXAMPLE / "datasurface.yaml"
    store = parse_model(path.read_text(), str(path)).store("Shop")
    assert (store.source.type, store.source.port, store.source.credential) == ("mysql", 3306, "shop")


def test_example_values_give_the_job_pods_the_mysql_credential(render: Callable[..., list[dict[str, Any]]]) -> None:
    docs = render(values_file=EXAMPLE / "values-mysql-source.yaml")
    credential = parse_model((EXAMPLE / "datasurface.yaml").read_text(), "m").store("Shop").source.credential
    prefix = env_prefix(credential)
    for platform in ("shoplive", "shopforensic"):
        settings = json.loads(find(docs, "ConfigMap", f"mvp-datasurface-dags-{platform}")["data"]["platform.json"])
        env = {e["name"]: (e["secret"], e["key"]) for e in settings["secretEnv"]}
        assert env[f"{prefix}_USER"] == ("shop-mysql", "username")
        assert env[f"{prefix}_PASSWORD"] == ("shop-mysql", "password")
        assert settings["stores"] == ["Shop"]
    assert not [d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"].endswith("-simulator")]
