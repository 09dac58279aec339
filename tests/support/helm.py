"""Run the real `helm` binary against charts/datasurface and parse what it renders.

Shared by the chart tests and the DAG tests: importable with the standard library and PyYAML only.
The helm binary is `$HELM_BIN`, else whatever `scripts/get-helm.sh` finds or fetches. Helm's cache,
config and data homes are pointed at a private temporary directory so tests never touch the user's.
"""

from __future__ import annotations

import functools
import os
import subprocess
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
CHART_DIR = REPO_ROOT / "charts" / "datasurface"
# chart-testing's values sets: one rendering per interesting configuration
CI_VALUES = sorted((CHART_DIR / "ci").glob("*-values.yaml"))


def ci_id(path: Path) -> str:
    """`ci/three-platforms-values.yaml` -> `three-platforms` (a readable pytest id)."""
    return path.name.removesuffix("-values.yaml")


@functools.cache
def helm_bin() -> str:
    """The path of a helm binary (cached for the process)."""
    env_bin = os.environ.get("HELM_BIN")
    if env_bin:
        return env_bin
    out = subprocess.run(
        [str(REPO_ROOT / "scripts" / "get-helm.sh")],
        check=True,
        capture_output=True,
        text=True,
    )
    return out.stdout.strip().splitlines()[-1]


@functools.cache
def _helm_home() -> str:
    return tempfile.mkdtemp(prefix="helm-home-")


def helm_env() -> dict[str, str]:
    """The environment for running helm: private cache/config/data homes, helm's folder on PATH."""
    env = dict(os.environ)
    home = Path(_helm_home())
    for name in ("CACHE", "CONFIG", "DATA"):
        key = f"HELM_{name}_HOME"
        if key not in os.environ:
            (home / name.lower()).mkdir(exist_ok=True)
            env[key] = str(home / name.lower())
    env["PATH"] = f"{Path(helm_bin()).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def run_helm(args: Sequence[str], check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run `helm ARGS` and return the completed process (stdout/stderr as text)."""
    proc = subprocess.run(
        [helm_bin(), *args], capture_output=True, text=True, env=helm_env(), check=False
    )
    if check and proc.returncode != 0:
        raise RuntimeError(f"helm {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}")
    return proc


def render_chart_text(
    values: dict[str, Any] | None = None,
    values_files: Iterable[str | os.PathLike[str]] = (),
    show_only: str | Sequence[str] | None = None,
    release: str = "mvp",
    namespace: str = "default",
    extra_args: Sequence[str] = (),
) -> str:
    """`helm template` output as text."""
    args = ["template", release, str(CHART_DIR), "--namespace", namespace]
    for path in values_files:
        args += ["--values", str(path)]
    with tempfile.TemporaryDirectory(prefix="helm-values-") as tmp:
        if values:
            values_path = Path(tmp) / "values.yaml"
            values_path.write_text(yaml.safe_dump(values, sort_keys=False))
            args += ["--values", str(values_path)]
        if show_only:
            for template in [show_only] if isinstance(show_only, str) else show_only:
                args += ["--show-only", template]
        args += list(extra_args)
        return run_helm(args).stdout


def render_chart(
    values: dict[str, Any] | None = None,
    values_files: Iterable[str | os.PathLike[str]] = (),
    show_only: str | Sequence[str] | None = None,
    release: str = "mvp",
    namespace: str = "default",
) -> list[dict[str, Any]]:
    """Render the chart with `helm template` and return the non-empty documents as dicts."""
    text = render_chart_text(values, values_files, show_only, release, namespace)
    return [doc for doc in yaml.safe_load_all(text) if doc]


def find(docs: Iterable[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    """The one document of this kind and name (KeyError when absent)."""
    for doc in docs:
        if doc.get("kind") == kind and doc.get("metadata", {}).get("name") == name:
            return doc
    raise KeyError(f"{kind}/{name} not rendered")
