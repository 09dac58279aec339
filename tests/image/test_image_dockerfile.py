"""The job image's Dockerfile (issue 6 item 1): hadolint-clean, pinned, non-root, small, and its build
context and builder stage really produce a working `datasurface-job`.

There is no container engine on these machines, so the image itself is not built here; the builder
stage's commands are run as they are in the Dockerfile, on the files .dockerignore lets into the context.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from tests.support.dockerfile import (
    DOCKERFILE,
    DOCKERIGNORE,
    REPO_ROOT,
    Stage,
    global_args,
    ignore_rules,
    in_context,
    key_values,
    stages,
    tracked_files,
)

PYPROJECT = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
TEXT = DOCKERFILE.read_text()


def tool(name: str) -> str:
    found = Path(sys.executable).parent / name
    if found.exists():
        return str(found)
    which = shutil.which(name)
    assert which, f"{name} is not installed (it is in the test extra)"
    return which


def final() -> Stage:
    return stages(TEXT)[-1]


def builder() -> Stage:
    return stages(TEXT)[0]


def git_stage() -> Stage:
    return stages(TEXT)[1]


# --- hadolint ----------------------------------------------------------------------------------------


def test_hadolint_reports_nothing() -> None:
    proc = subprocess.run([tool("hadolint"), "--no-color", "--failure-threshold", "style", str(DOCKERFILE)],
                          capture_output=True, text=True)
    assert (proc.returncode, proc.stdout + proc.stderr) == (0, "")


def test_hadolint_ignores_only_with_a_reason() -> None:
    for ins in [i for stage in stages(TEXT) for i in stage.instructions]:
        for pragma in ins.pragmas:
            assert pragma.lower().startswith("# hadolint ignore=DL3008".lower()), pragma
    # The one ignore (unpinned Debian packages) is explained right above it.
    assert "a pin would break the build on the next security fix" in TEXT


def test_hadolint_really_lints(tmp_path: Path) -> None:
    """The check above can fail: a Dockerfile with the usual mistakes is reported."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN apt-get update && apt-get install -y git\nRUN pip install requests\n")
    proc = subprocess.run([tool("hadolint"), "--no-color", str(bad)], capture_output=True, text=True)
    assert proc.returncode != 0
    for rule in ("DL3007", "DL3008", "DL3015", "DL3009", "DL3013", "DL3042"):
        assert rule in proc.stdout


# --- what the image is -------------------------------------------------------------------------------


def test_base_image_is_a_pinned_slim_python_matching_requires_python() -> None:
    base = global_args(TEXT)["PYTHON_IMAGE"]
    match = re.fullmatch(r"python:(3\.\d+)\.\d+-slim-bookworm(@sha256:[0-9a-f]{64})?", base)
    assert match, f"base image not pinned to a full version tag: {base}"
    assert PYPROJECT["project"]["requires-python"] == f">={match.group(1)}"
    assert [s.base for s in stages(TEXT)] == ["${PYTHON_IMAGE}"] * 3
    assert (builder().name, git_stage().name) == ("builder", "git")


def test_builder_installs_a_wheel_of_this_repo_into_a_venv_without_pip() -> None:
    (run,) = builder().all("RUN")
    assert "pip wheel --no-cache-dir --no-deps --wheel-dir /wheels ." in run.args
    assert "python -m venv --without-pip /opt/venv" in run.args
    assert "pip --python /opt/venv/bin/python install --no-cache-dir --no-compile /wheels/*.whl" in run.args
    assert "/opt/venv/bin/datasurface-job --version" in run.args
    copies = [c.args for c in builder().all("COPY")]
    assert copies == ["pyproject.toml README.md ./", "src/ ./src/"]


def installed(run: str) -> set[str]:
    install = re.search(r"apt-get install -y --no-install-recommends ([^&]+)&&", run)
    assert install, run
    return set(install.group(1).split())


def test_git_stage_keeps_the_fetch_machinery_of_debians_git() -> None:
    (run,) = git_stage().all("RUN")
    assert installed(run.args) == {"git"}
    assert "cp -a /usr/lib/git-core/git /usr/lib/git-core/git-remote-http /out/usr/lib/git-core/" in run.args
    assert "ln -s ../lib/git-core/git /out/usr/bin/git" in run.args
    assert "/usr/share/doc/git/copyright" in run.args


def test_final_stage_has_the_venv_git_and_nothing_to_build_with() -> None:
    stage = final()
    assert [c.args for c in stage.all("COPY")] == ["--from=git /out/ /", "--from=builder /opt/venv /opt/venv"]
    run, bytecode = stage.all("RUN")
    # the second compiles the bytecode of what a merge imports (cli/bytecode.py), with the venv's python
    assert bytecode.args == "/opt/venv/bin/python -m datasurface.cli.bytecode"
    packages = installed(run.args)
    # git's runtime libraries, ssh and CA certificates; not Debian's git package (it depends on perl)
    assert packages == {"libcurl3-gnutls", "libpcre2-8-0", "zlib1g", "openssh-client", "ca-certificates"}
    assert not packages & {"gcc", "build-essential", "python3-dev", "libpq-dev", "make", "git", "perl"}
    assert "ldd /usr/lib/git-core/git /usr/lib/git-core/git-remote-http" in run.args
    assert "rm -rf /var/lib/apt/lists/*" in run.args
    assert "pip " not in run.args


def test_runs_as_uid_10001_with_home_and_tmpdir_in_tmp() -> None:
    stage = final()
    run, _bytecode = stage.all("RUN")
    assert "groupadd --system --gid 10001 datasurface" in run.args
    assert "useradd --system --uid 10001 --gid 10001 --home-dir /tmp" in run.args
    assert [u.args for u in stage.all("USER")] == ["10001:10001"]
    env: dict[str, str] = {}
    for ins in stage.all("ENV"):
        env.update(key_values(ins.args))
    assert env["HOME"] == env["TMPDIR"] == "/tmp"
    assert env["PYTHONDONTWRITEBYTECODE"] == "1"
    assert env["PATH"].startswith("/opt/venv/bin:")
    assert env["GIT_TERMINAL_PROMPT"] == "0"


def test_entrypoint_is_datasurface_job_in_exec_form() -> None:
    assert [e.args for e in final().all("ENTRYPOINT")] == ['["datasurface-job"]']
    assert PYPROJECT["project"]["scripts"]["datasurface-job"].startswith("datasurface.cli:")


def test_oci_labels_carry_version_source_and_license() -> None:
    labels: dict[str, str] = {}
    for ins in final().all("LABEL"):
        labels.update(key_values(ins.args))
    args = {i.args.partition("=")[0]: i.args.partition("=")[2] for i in final().all("ARG")}
    assert labels["org.opencontainers.image.version"] == "${VERSION}"
    assert args["VERSION"] == PYPROJECT["project"]["version"]
    assert labels["org.opencontainers.image.source"] == "${SOURCE}"
    assert args["SOURCE"].startswith("https://")
    assert labels["org.opencontainers.image.licenses"] == PYPROJECT["project"]["license"]
    assert labels["org.opencontainers.image.title"] == "datasurface-job"


# --- build context -----------------------------------------------------------------------------------


def context_files() -> list[str]:
    rules = ignore_rules(DOCKERIGNORE.read_text())
    return [p for p in tracked_files() if in_context(p, rules) and (REPO_ROOT / p).exists()]


def test_dockerignore_keeps_only_the_package_in_the_context() -> None:
    rules = ignore_rules(DOCKERIGNORE.read_text())
    files = context_files()
    assert {"pyproject.toml", "README.md", "src/datasurface/cli/__init__.py"} <= set(files)
    assert all(p in ("pyproject.toml", "README.md") or p.startswith("src/") for p in files), files
    for junk in (".git/HEAD", ".venv/bin/python", ".venv-airflow/bin/airflow", "tests/conftest.py",
                 "charts/datasurface/values.yaml", ".tools/bin/helm", ".mypy_cache/3.11/x.json",
                 ".pytest_cache/v/x", "src/datasurface/__pycache__/cli.cpython-311.pyc",
                 "src/datasurface/model/__pycache__", "src/datasurface_k8s.egg-info/PKG-INFO",
                 "build/lib/datasurface/cli.py", "dist/x.whl", "image/Dockerfile"):
        assert not in_context(junk, rules), junk


def test_dockerignore_reader_follows_dockers_rules() -> None:
    """The reader behind the test above: last match wins, `!` re-includes, parents count."""
    rules = ignore_rules("**\n!src/**\n**/__pycache__\n!keep/__pycache__/x\n")
    assert not in_context("a.txt", rules)
    assert in_context("src/a.py", rules)
    assert not in_context("src/p/__pycache__/a.pyc", rules)
    assert in_context("keep/__pycache__/x", rules)
    assert not in_context("keep/__pycache__/y", rules)
    assert ignore_rules("!keep/__pycache__/x\n")[0][0] is True


@pytest.mark.timeout(300)
def test_builder_stage_builds_a_working_job_from_the_context(tmp_path: Path) -> None:
    """The builder stage's commands, run as written on a copy of exactly the build context."""
    context = tmp_path / "context"
    for rel in context_files():
        (context / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO_ROOT / rel, context / rel)
    python = sys.executable
    wheels, venv = tmp_path / "wheels", tmp_path / "venv"
    steps = [
        [python, "-m", "pip", "wheel", "-q", "--no-deps", "--wheel-dir", str(wheels), "."],
        [python, "-m", "venv", "--without-pip", str(venv)],
    ]
    for argv in steps:
        subprocess.run(argv, cwd=context, check=True, capture_output=True, text=True)
    (wheel,) = wheels.glob("*.whl")
    subprocess.run([python, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "-q", str(wheel)],
                   check=True, capture_output=True, text=True)
    proc = subprocess.run([str(venv / "bin" / "datasurface-job"), "--version"], capture_output=True, text=True,
                          cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [f"datasurface-job {PYPROJECT['project']['version']}",
                                        "DATASURFACE_RESULT_CODE=0"]
    assert not (venv / "bin" / "pip").exists()
    # Every subpackage made it into the wheel (a missing one fails at import, not at build time).
    check = subprocess.run(
        [str(venv / "bin" / "python"), "-c",
         "import json, pkgutil, datasurface; print(json.dumps(sorted(m.name for m in pkgutil.walk_packages("
         "datasurface.__path__, 'datasurface.') if m.ispkg)))"],
        capture_output=True, text=True, check=True, cwd=tmp_path)
    expected = sorted(f"datasurface.{p.parent.relative_to(REPO_ROOT / 'src' / 'datasurface')}".replace("/", ".")
                      for p in (REPO_ROOT / "src" / "datasurface").rglob("__init__.py")
                      if p.parent != REPO_ROOT / "src" / "datasurface"
                      and "src/" + str(p.relative_to(REPO_ROOT / "src")) in context_files())
    assert json.loads(check.stdout) == expected
