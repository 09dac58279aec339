"""helm lint --strict per ci values file; chart-testing's yamale schema and yamllint rules (item 8)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yamale
from yamllint import linter
from yamllint.config import YamlLintConfig

from tests.support.helm import CHART_DIR, CI_VALUES, REPO_ROOT, ci_id, helm_bin, run_helm

HERE = Path(__file__).parent
YAML_FILES = [CHART_DIR / "Chart.yaml", CHART_DIR / "values.yaml", *CI_VALUES]


def test_ci_values_cover_the_required_configurations() -> None:
    names = {ci_id(p) for p in CI_VALUES}
    assert {"defaults", "external-db", "airflow-disabled", "forensic-only", "three-platforms",
            "simulator-scaled", "local-runner"} <= names


@pytest.mark.parametrize("values_file", CI_VALUES, ids=ci_id)
def test_helm_lint_strict(values_file: Path) -> None:
    proc = run_helm(["lint", "--strict", str(CHART_DIR), "--values", str(values_file)], check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 chart(s) failed" in proc.stdout


def test_helm_lint_strict_fails_on_a_bad_value() -> None:
    proc = run_helm(["lint", "--strict", str(CHART_DIR), "--set", "platforms[0].mode=sometimes"], check=False)
    assert proc.returncode != 0


def test_chart_yaml_matches_chart_testing_schema() -> None:
    schema = yamale.make_schema(str(HERE / "chart_schema.yaml"))
    data = yamale.make_data(str(CHART_DIR / "Chart.yaml"))
    yamale.validate(schema, data, strict=True)


def test_chart_testing_schema_rejects_a_bad_chart_yaml(tmp_path: Path) -> None:
    bad = tmp_path / "Chart.yaml"
    bad.write_text("apiVersion: v2\nname: x\nversion: 0.1.0\nhome: h\ndescription: d\nbogus: 1\n")
    schema = yamale.make_schema(str(HERE / "chart_schema.yaml"))
    with pytest.raises(yamale.YamaleError):
        yamale.validate(schema, yamale.make_data(str(bad)), strict=True)


@pytest.mark.parametrize("path", YAML_FILES, ids=lambda p: str(p.relative_to(CHART_DIR)))
def test_yamllint_chart_testing_rules(path: Path) -> None:
    config = YamlLintConfig(file=str(HERE / "lintconf.yaml"))
    problems = [p for p in linter.run(path.read_text(), config, str(path)) if p.level == "error"]
    assert not problems, "\n".join(f"{path.name}:{p.line}:{p.column} {p.message}" for p in problems)


def test_chart_metadata() -> None:
    import yaml

    chart = yaml.safe_load((CHART_DIR / "Chart.yaml").read_text())
    pyproject = (REPO_ROOT / "pyproject.toml").read_text()
    assert chart["apiVersion"] == "v2"
    assert chart["kubeVersion"]
    assert f'version = "{chart["appVersion"]}"' in pyproject, "appVersion is the job image (package) version"


def test_get_helm_prints_an_executable_helm() -> None:
    out = subprocess.run([str(REPO_ROOT / "scripts" / "get-helm.sh")], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out.splitlines() == [out], "only the path on stdout"
    version = subprocess.run([out, "version", "--short"], capture_output=True, text=True, check=True).stdout
    assert version.startswith(("v3.", "v4."))
    assert helm_bin()
