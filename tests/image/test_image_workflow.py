"""The real-cluster CI workflow (issue 6 item 4). It cannot run on these machines (no Docker engine, no
cluster), so the suite checks what can be checked here: it is a valid GitHub Actions workflow (the
schema GitHub's own tooling uses, vendored by check-jsonschema), its shell steps pass shellcheck, it does
the four things the issue asks, and every file of this repository it names exists."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from tests.support.dockerfile import REPO_ROOT
from tests.support.shell import commands

WORKFLOW = REPO_ROOT / ".github" / "workflows" / "chart.yaml"
BIN = Path(sys.executable).parent


def workflow() -> dict[str, Any]:
    # PyYAML reads the key `on` as True (YAML 1.1); the schema check below reads the file itself.
    return yaml.safe_load(WORKFLOW.read_text())  # type: ignore[no-any-return]


def steps() -> list[dict[str, Any]]:
    return [step for job in workflow()["jobs"].values() for step in job["steps"]]


def step_commands() -> list[list[str]]:
    return [argv for s in steps() for argv in commands(s.get("run", ""))]


def check_workflow(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / "check-jsonschema"), "--builtin-schema", "vendor.github-workflows",
                           str(path)], capture_output=True, text=True)


def test_workflow_is_a_valid_github_actions_workflow(tmp_path: Path) -> None:
    proc = check_workflow(WORKFLOW)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    broken = tmp_path / "broken.yaml"
    broken.write_text(WORKFLOW.read_text().replace("runs-on:", "runs_on:", 1))
    assert check_workflow(broken).returncode != 0


def test_workflow_runs_kind_ct_lint_ct_install_upgrade_helm_test_and_the_suite() -> None:
    uses = [s.get("uses", "") for s in steps()]
    run = step_commands()
    assert any(u.startswith("helm/kind-action@") for u in uses)
    assert any(u.startswith("helm/chart-testing-action@") for u in uses)
    assert ["ct", "lint", "--config", "ct.yaml"] in [argv[:4] for argv in run]
    assert any(argv[:4] == ["ct", "install", "--config", "ct.yaml"] and "--upgrade" in argv for argv in run)
    assert ["scripts/test.sh"] in run
    assert "scripts/kind-up.sh" in [argv[0] for argv in run]  # `helm test` with the example values, a DAG run
    kind_up = commands((REPO_ROOT / "scripts" / "kind-up.sh").read_text())
    assert ["$helm", "test", "$release"] in [argv[:3] for argv in kind_up]
    assert all(re.search(r"@v\d", u) for u in uses if u), "actions must be pinned"
    assert workflow()["permissions"] == {"contents": "read"}


def test_workflow_names_only_files_that_exist() -> None:
    runs = "\n".join(s.get("run", "") for s in steps())
    named = set(re.findall(r"(?:scripts/[\w.-]+\.sh|ct\.yaml|image/Dockerfile|charts/datasurface)", runs))
    assert named >= {"scripts/test.sh", "scripts/build-image.sh", "scripts/kind-up.sh", "ct.yaml"}
    for rel in sorted(named):
        assert (REPO_ROOT / rel).exists(), f"the workflow names {rel}, which does not exist"


def test_workflow_shell_steps_pass_shellcheck(tmp_path: Path) -> None:
    for n, step in enumerate(s for s in steps() if "run" in s):
        # GitHub substitutes ${{ ... }} before the shell sees the script.
        script = re.sub(r"\$\{\{[^}]*\}\}", "x", step["run"])
        path = tmp_path / f"step{n}.sh"
        path.write_text("#!/usr/bin/env bash\nset -e\n" + script)
        proc = subprocess.run([str(BIN / "shellcheck"), "--severity=style", str(path)], capture_output=True,
                              text=True)
        assert proc.returncode == 0, f"{step.get('name', step['run'])}:\n{proc.stdout}"
