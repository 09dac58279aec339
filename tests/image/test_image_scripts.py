"""The real-cluster scripts (issue 6 items 1 and 3): shellcheck-clean; build-image.sh picks docker, then
podman, then buildah and tags datasurface-job:<version>; kind-down.sh deletes only its cluster; and the
in-cluster model git server that kind-up.sh deploys really serves the example model over git://.

No container engine or kind here: the builders and kind are stand-ins that record their arguments (the
scripts' logic is what is tested); the model server's own script runs for real, on loopback.
"""

from __future__ import annotations

import datetime
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest
import yaml

from tests.support.dockerfile import REPO_ROOT

SCRIPTS = ["scripts/build-image.sh", "scripts/kind-up.sh", "scripts/kind-down.sh", "scripts/standin-base.sh"]
VERSION = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["version"]


def shellcheck() -> str:
    found = Path(sys.executable).parent / "shellcheck"
    return str(found) if found.exists() else (shutil.which("shellcheck") or "shellcheck")


@pytest.mark.parametrize("script", SCRIPTS)
def test_shellcheck_clean(script: str) -> None:
    proc = subprocess.run([shellcheck(), "--severity=style", script], cwd=REPO_ROOT, capture_output=True,
                          text=True)
    assert (proc.returncode, proc.stdout) == (0, "")
    assert os.access(REPO_ROOT / script, os.X_OK), f"{script} is not executable"


def test_shellcheck_really_checks(tmp_path: Path) -> None:
    bad = tmp_path / "bad.sh"
    bad.write_text("#!/bin/sh\nrm -rf $1/*\n")
    proc = subprocess.run([shellcheck(), str(bad)], capture_output=True, text=True)
    assert proc.returncode != 0 and "SC2086" in proc.stdout


# --- stand-in tools -------------------------------------------------------------------------------------

SYSTEM_TOOLS = ["bash", "env", "sh", "dirname", "awk", "sed", "git", "date", "cat", "grep", "tr", "cut",
                "cksum", "mktemp", "rm", "seq", "sleep"]


def sandbox_path(tmp_path: Path, fakes: dict[str, str]) -> tuple[str, Path]:
    """A PATH with only the system tools the scripts use plus stand-ins that log their argv to a file."""
    sys_bin, fake_bin, log = tmp_path / "sys", tmp_path / "fake", tmp_path / "calls.log"
    sys_bin.mkdir()
    fake_bin.mkdir()
    for name in SYSTEM_TOOLS:
        real = shutil.which(name)
        assert real, name
        (sys_bin / name).symlink_to(real)
    for name, body in fakes.items():
        script = fake_bin / name
        script.write_text(f'#!/bin/sh\necho "{name} $*" >> "{log}"\n{body}\n')
        script.chmod(0o755)
    return f"{fake_bin}{os.pathsep}{sys_bin}", log


def run_script(script: str, args: list[str], path: str,
               env_extra: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    env = {"PATH": path, "HOME": os.environ.get("HOME", "/tmp"), **(env_extra or {})}
    return subprocess.run([str(REPO_ROOT / script), *args], env=env, capture_output=True, text=True,
                          timeout=60)


def calls(log: Path) -> list[str]:
    return log.read_text().splitlines() if log.exists() else []


def options(call: str) -> list[tuple[str, str]]:
    """The options of a logged call, in order: (`--flag`, its value), '' for a flag followed by another."""
    argv = call.split()
    return [(arg, argv[i + 1] if i + 1 < len(argv) and not argv[i + 1].startswith("--") else "")
            for i, arg in enumerate(argv) if arg.startswith("--")]


def build_args(call: str) -> dict[str, str]:
    """The `--build-arg NAME=value` of a logged build, as {NAME: value}."""
    return dict(value.partition("=")[::2] for flag, value in options(call) if flag == "--build-arg")


def revision() -> str:
    return subprocess.run(["git", "-C", str(REPO_ROOT), "rev-parse", "HEAD"], capture_output=True, text=True,
                          check=True).stdout.strip()


# --- build-image.sh ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("installed", "expected"), [
    (["docker", "podman", "buildah"], "docker"),
    (["podman", "buildah"], "podman"),
    (["buildah"], "buildah"),
])
def test_build_image_picks_docker_then_podman_then_buildah(tmp_path: Path, installed: list[str],
                                                           expected: str) -> None:
    path, log = sandbox_path(tmp_path, dict.fromkeys(installed, ""))
    proc = run_script("scripts/build-image.sh", [], path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [f"datasurface-job:{VERSION}"]
    (call,) = [c for c in calls(log) if c != "docker info"]  # docker counts only if its engine answers
    argv = call.split()
    assert argv[:2] == [expected, "build"]
    assert argv[-1] == str(REPO_ROOT)
    assert ("--file", f"{REPO_ROOT}/image/Dockerfile") in options(call)
    assert [value for flag, value in options(call) if flag == "--tag"] == [f"datasurface-job:{VERSION}"]
    args = build_args(call)
    created = datetime.datetime.strptime(args.pop("CREATED"), "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.UTC)
    assert abs((datetime.datetime.now(datetime.UTC) - created).total_seconds()) < 60
    assert args == {"VERSION": VERSION, "REVISION": revision()}


def test_build_image_tags_and_pushes_to_a_registry(tmp_path: Path) -> None:
    path, log = sandbox_path(tmp_path, {"podman": ""})
    proc = run_script("scripts/build-image.sh", ["--registry", "ghcr.io/me/", "--tag", "dev", "--push"], path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["ghcr.io/me/datasurface-job:dev"]
    build, push = calls(log)
    assert [value for flag, value in options(build) if flag == "--tag"] == ["datasurface-job:dev",
                                                                             "ghcr.io/me/datasurface-job:dev"]
    assert push == "podman push ghcr.io/me/datasurface-job:dev"


def test_build_image_takes_buildah_where_docker_has_no_engine(tmp_path: Path) -> None:
    """Machines like the CI one: the docker client without a daemon, no podman, buildah with chroot isolation."""
    path, log = sandbox_path(tmp_path, {"docker": '[ "$1" = info ] && exit 1', "buildah": ""})
    proc = run_script("scripts/build-image.sh", ["--ca-bundle", "none"], path)
    assert proc.returncode == 0, proc.stderr
    docker_info, build = calls(log)
    assert docker_info == "docker info"
    assert build.split()[:2] == ["buildah", "build"]
    assert options(build)[:4] == [("--isolation", "chroot"), ("--layers", ""), ("--force-rm", ""),
                                  ("--file", f"{REPO_ROOT}/image/Dockerfile")]
    assert "--secret" not in dict(options(build)) and "PYTHON_IMAGE" not in build_args(build)


def test_build_image_buildah_base_and_ca_bundle(tmp_path: Path) -> None:
    bundle = tmp_path / "ca.pem"
    bundle.write_text("-----BEGIN CERTIFICATE-----\n")
    path, log = sandbox_path(tmp_path, {"buildah": ""})
    proc = run_script("scripts/build-image.sh", ["--builder", "buildah", "--base", "localhost/standin:1",
                                                 "--ca-bundle", str(bundle), "--no-cache"], path,
                      {"BUILDAH_ISOLATION": "oci"})
    assert proc.returncode == 0, proc.stderr
    (build,) = calls(log)
    assert build.split()[:2] == ["buildah", "build"]
    assert options(build)[:3] == [("--isolation", "oci"), ("--layers", ""), ("--force-rm", "")]
    assert build_args(build)["PYTHON_IMAGE"] == "localhost/standin:1"
    assert ("--secret", f"id=pip-ca,src={bundle}") in options(build)
    assert build.split()[-2:] == ["--no-cache", str(REPO_ROOT)]


def test_build_image_reads_the_ca_bundle_from_pip_config(tmp_path: Path) -> None:
    """No --ca-bundle: the `cert` of pip's configuration (the env's, listed first, wins), read at run time."""
    bundle = tmp_path / "machine-ca.pem"
    bundle.write_text("-----BEGIN CERTIFICATE-----\n")
    pip_config = f"printf \"%s\\n\" \":env:.cert='{bundle}'\" \"global.cert='/etc/other.pem'\" \"global.timeout='9'\""
    path, log = sandbox_path(tmp_path, {"buildah": "", "fake-python": pip_config})
    proc = run_script("scripts/build-image.sh", [], path, {"PYTHON": "fake-python"})
    assert proc.returncode == 0, proc.stderr
    pip_call, build = calls(log)
    assert pip_call == "fake-python -m pip config list"
    assert ("--secret", f"id=pip-ca,src={bundle}") in options(build)

    log.unlink()
    proc = run_script("scripts/build-image.sh", ["--ca-bundle", "none"], path, {"PYTHON": "fake-python"})
    assert proc.returncode == 0, proc.stderr
    assert "--secret" not in dict(options(calls(log)[-1]))


@pytest.mark.parametrize(("args", "fakes", "message"), [
    ([], {}, "none of docker (with a running engine), podman or buildah is installed"),
    (["--push"], {"docker": ""}, "--push needs --registry"),
    (["--what"], {"docker": ""}, "unknown argument: --what"),
    ([], {"docker": '[ "$1" = info ] || exit 3'}, ""),
    ([], {"docker": '[ "$1" = info ] && exit 1'}, "none of docker (with a running engine)"),
    (["--ca-bundle", "/nonexistent/ca.pem"], {"buildah": ""}, "CA bundle /nonexistent/ca.pem is not a readable"),
])
def test_build_image_fails_clearly(tmp_path: Path, args: list[str], fakes: dict[str, str], message: str) -> None:
    path, _ = sandbox_path(tmp_path, fakes)
    proc = run_script("scripts/build-image.sh", args, path)
    assert proc.returncode != 0
    assert message in proc.stderr
    assert proc.stdout == ""


# --- kind-down.sh --------------------------------------------------------------------------------------


def test_kind_down_deletes_only_its_cluster(tmp_path: Path) -> None:
    path, log = sandbox_path(tmp_path, {"kind": 'if [ "$1" = get ]; then printf "other\\ndatasurface\\n"; fi'})
    proc = run_script("scripts/kind-down.sh", [], path)
    assert proc.returncode == 0, proc.stderr
    assert calls(log) == ["kind get clusters", "kind delete cluster --name datasurface"]

    log.unlink()
    proc = run_script("scripts/kind-down.sh", ["--name", "absent"], path)
    assert proc.returncode == 0 and "nothing to do" in proc.stderr
    assert calls(log) == ["kind get clusters"]


# --- kind-up.sh: the in-cluster model git server -------------------------------------------------------


def model_server(release: str = "mvp", namespace: str = "datasurface") -> list[dict]:  # type: ignore[type-arg]
    proc = subprocess.run([str(REPO_ROOT / "scripts/kind-up.sh"), "--print-model-server", "--release", release,
                           "--namespace", namespace], capture_output=True, text=True, check=True)
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


def test_model_server_manifests_are_valid_and_restricted(tmp_path: Path) -> None:
    docs = model_server()
    assert [(d["kind"], d["metadata"]["name"]) for d in docs] == [
        ("ConfigMap", "model-git-seed"), ("Deployment", "model-git"), ("Service", "model-git")]
    manifest = tmp_path / "model-git.yaml"
    manifest.write_text(yaml.safe_dump_all(docs))
    validator = Path(sys.executable).parent / "kubernetes-validate"
    for k8s in ("1.30.0", "1.35.0"):
        proc = subprocess.run([str(validator), "--strict", "--quiet", "-k", k8s, str(manifest)],
                              capture_output=True, text=True)
        assert proc.returncode == 0, proc.stdout + proc.stderr

    pod = docs[1]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["image"] == f"datasurface-job:{VERSION}"
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert container["securityContext"] == {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                            "capabilities": {"drop": ["ALL"]}}
    assert {m["mountPath"] for m in container["volumeMounts"]} == {"/seed", "/srv/git", "/tmp"}
    assert docs[2]["spec"]["ports"][0]["port"] == 9418


def test_model_server_follows_the_release_name() -> None:
    example = (REPO_ROOT / "examples/model/datasurface.yaml").read_text()
    assert model_server()[0]["data"]["datasurface.yaml"] == example
    renamed = model_server(release="prod")[0]["data"]["datasurface.yaml"]
    assert renamed == example.replace("host: mvp-datasurface-postgresql", "host: prod-datasurface-postgresql")
    assert renamed != example


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.timeout(120)
def test_model_server_serves_the_example_model_over_git(tmp_path: Path) -> None:
    """The Deployment's own script, run on loopback: the job's model loader clones the model from it."""
    from datasurface.model import load_model

    docs = model_server()
    container = docs[1]["spec"]["template"]["spec"]["containers"][0]
    seed = tmp_path / "seed"
    seed.mkdir()
    (seed / "datasurface.yaml").write_text(docs[0]["data"]["datasurface.yaml"])
    port = free_port()
    env = {**os.environ, "SEED_DIR": str(seed), "GIT_ROOT": str(tmp_path / "git"), "GIT_PORT": str(port),
           "LISTEN": "127.0.0.1", "TMPDIR": str(tmp_path)}
    (tmp_path / "git").mkdir()
    server = subprocess.Popen([*container["command"], *container["args"]], env=env, start_new_session=True,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        url = f"git://127.0.0.1:{port}/model.git"
        deadline = time.monotonic() + 30
        while True:
            probe = subprocess.run(["git", "ls-remote", "--symref", url], capture_output=True, text=True)
            if probe.returncode == 0 or time.monotonic() > deadline or server.poll() is not None:
                break
            time.sleep(0.2)
        assert probe.returncode == 0, probe.stderr
        assert "ref: refs/heads/main\tHEAD" in probe.stdout

        model = load_model(url)  # the remote's default branch, as the chart's job pods ask for it
        assert [s.name for s in model.stores] == ["Store1", "Store3"]
        assert [d.name for d in model.stores[0].datasets] == ["customers", "addresses"]
        assert load_model(url, ref="main").stores == model.stores
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        out, _ = server.communicate(timeout=10)
    assert "model-git: serving" in out
