"""The chart README's values table is generated from values.yaml (scripts/chart-readme.py) and current."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from tests.support.helm import CHART_DIR, REPO_ROOT

SCRIPT = REPO_ROOT / "scripts" / "chart-readme.py"


@pytest.fixture(scope="module")
def generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("chart_readme", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_readme_is_current() -> None:
    proc = subprocess.run([sys.executable, str(SCRIPT), "--check"], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr


def test_a_changed_comment_makes_the_readme_stale(generator: ModuleType, tmp_path: Path) -> None:
    chart = tmp_path / "datasurface"
    shutil.copytree(CHART_DIR, chart, ignore=shutil.ignore_patterns("files", "templates", "tests", "ci"))
    readme, wanted = generator.current_readme(chart)
    assert readme == wanted
    values = chart / "values.yaml"
    values.write_text(values.read_text().replace("# -- Override the chart name used in resource names.",
                                                 "# -- Override the chart's name | in names."))
    readme, wanted = generator.current_readme(chart)
    assert readme != wanted
    assert "| `nameOverride` | `\"\"` | Override the chart's name \\| in names. |" in wanted


def test_every_documented_key_has_its_row(generator: ModuleType) -> None:
    readme = (CHART_DIR / "README.md").read_text()
    documented = [(".".join(path), doc) for path, doc in generator.documented_keys((CHART_DIR / "values.yaml")
                                                                                  .read_text()) if doc]
    assert len(documented) > 100
    for key, _ in documented:
        assert f"| `{key}` |" in readme, key


@pytest.mark.parametrize("key", [
    "externalDatabase.sslMode", "externalDatabase.caSecret", "networkPolicy", "networkPolicy.postgresql.extraFrom",
    "simulator.enabled", "airflow.ingress", "airflow.ingress.className", "airflow.ingress.host",
    "airflow.ingress.annotations", "airflow.ingress.tls.secretName", "airflow.logs.persistence",
    "airflow.logs.persistence.storageClass", "airflow.logs.persistence.existingClaim", "jobs.nodeSelector",
    "jobs.tolerations", "jobs.affinity", "jobs.podAnnotations", "airflow.podAnnotations", "airflow.extraVolumes",
    "airflow.extraVolumeMounts", "postgresql.podAnnotations", "simulator.podAnnotations", "metrics.podAnnotations",
    "airflow.initContainers.resources", "airflow.migrations.resources", "airflow.apiServer.resources",
    "airflow.scheduler.resources", "airflow.dagProcessor.resources", "postgresql.resources", "simulator.resources",
    "tests.resources", "metrics.resources", "jobs.resources",
])
def test_production_keys_have_a_comment(generator: ModuleType, key: str) -> None:
    docs = {".".join(path): doc for path, doc in generator.documented_keys((CHART_DIR / "values.yaml").read_text())}
    assert docs.get(key), f"{key} has no `# --` comment in values.yaml"


def test_check_fails_on_a_stale_readme(generator: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    chart = tmp_path / "datasurface"
    shutil.copytree(CHART_DIR, chart, ignore=shutil.ignore_patterns("files", "templates", "tests", "ci"))
    (chart / "README.md").write_text((chart / "README.md").read_text().replace("| `nameOverride` |", "| `x` |"))
    monkeypatch.setattr(generator, "CHART", chart)
    assert generator.main(["--check"]) == 1
    assert "is not current: run scripts/chart-readme.py" in capsys.readouterr().err
    assert generator.main([]) == 0
    assert generator.main(["--check"]) == 0
