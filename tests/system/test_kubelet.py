"""kubelet.py itself: env resolution, volume layout, users, read-only root, Services and signals, on small
hand-written manifests (fast; the chart's pods are in test_airflow_installed.py)."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.system.kubelet import Cluster, Image, KubeletError, Manifests, Pod, expand, secret

# Debian's Python (standard library only): reachable by any user wherever the clone lives (a venv inside a
# 0700 clone folder is not, for the non-root users these containers run as)
PY = "/usr/bin/python3.11" if Path("/usr/bin/python3.11").exists() else sys.executable


def image() -> Image:
    def entrypoint(command: list[str] | None, args: list[str]) -> list[str]:
        return [*(command or [PY]), *args]
    return Image(env={"PATH": f"{Path(PY).parent}:/usr/bin:/bin", "FROM_IMAGE": "1"}, entrypoint=entrypoint,
                 dirs={"/opt/app": (10001, 10001, 0o755)}, passwd=["app:x:10001:10001::/opt/app:/bin/sh"],
                 uid=10001, gid=10001, workdir="/opt/app")


def pod_doc(container: dict[str, Any], **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "probe", "labels": {"app": "p"}},
            "spec": {"containers": [{"name": "main", "image": "example/app:1", **container}], **spec}}


CONFIG = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cfg"},
          "data": {"a.txt": "A", "b.json": "{}", "host": "db"}}
DUMP = ("import json, os, sys; json.dump({'env': dict(os.environ), 'uid': os.getuid(), 'gid': os.getgid(), "
        "'groups': os.getgroups(), 'cwd': os.getcwd(), 'hostname': os.uname().nodename, "
        "'files': sorted(os.listdir('/cfg')), 'a': open('/cfg/dir/a.txt').read(), "
        "'data': os.readlink('/cfg/..data').startswith('..'), 'hosts': open('/etc/hosts').read(), "
        "'root_writable': os.access('/', os.W_OK), 'tmp_writable': os.access('/scratch', os.W_OK)}, "
        "open('/scratch/out.json', 'w'))")


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    os.chmod(tmp_path, 0o755)
    manifests = Manifests([CONFIG, secret("creds", {"password": "s3cr;et $(X)", "user": "u"}),
                           {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "db"},
                            "spec": {"ports": [{"port": 5432}]}}])
    with Cluster(manifests, tmp_path / "node", images={"example/app": image()}) as c:
        yield c


def test_expand_is_kubernetes_var_expansion() -> None:
    env = {"A": "1", "B": "x y"}
    assert expand("$(A)-$(B)-$(C)-$$(A)-$$$(A)", env) == "1-x y-$(C)-$(A)-$1"


def test_env_order_refs_and_errors(cluster: Cluster) -> None:
    doc = pod_doc({"envFrom": [{"configMapRef": {"name": "cfg"}, "prefix": "CFG_"}],
                   "env": [{"name": "USER", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "user"}}},
                           {"name": "PW", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "password"}}},
                           {"name": "URL", "value": "pg://$(USER):$(PW)@$(CFG_host)/$(LATER)"},
                           {"name": "LATER", "value": "late"},
                           {"name": "OPT", "valueFrom": {"secretKeyRef": {"name": "nope", "key": "k",
                                                                          "optional": True}}},
                           {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                           {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}}]})
    pod = Pod(cluster, doc, "probe", "127.0.1.9")
    env = pod.container_env(doc["spec"]["containers"][0], image())
    assert env["URL"] == "pg://u:s3cr;et $(X)@db/$(LATER)"  # only earlier names expand; values are not re-expanded
    assert env["CFG_a.txt"] == "A" and env["FROM_IMAGE"] == "1" and env["HOSTNAME"] == "probe"
    assert "OPT" not in env and env["POD"] == "probe" and env["APP"] == "p"
    bad = pod_doc({"env": [{"name": "X", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "missing"}}}]})
    with pytest.raises(KubeletError, match="CreateContainerConfigError: X: key 'missing' of Secret 'creds'"):
        Pod(cluster, bad, "probe", "127.0.1.9").container_env(bad["spec"]["containers"][0])


def test_a_container_runs_with_its_volumes_user_and_read_only_root(cluster: Cluster, tmp_path: Path) -> None:
    doc = pod_doc({"args": ["-c", DUMP], "env": [{"name": "E", "value": "v"}],
                   "securityContext": {"readOnlyRootFilesystem": True, "allowPrivilegeEscalation": False},
                   "volumeMounts": [{"name": "cfg", "mountPath": "/cfg", "readOnly": True},
                                    {"name": "scratch", "mountPath": "/scratch"},
                                    {"name": "scratch", "mountPath": "/var/run/kubelet-test"}]},
                  securityContext={"runAsUser": 10002, "runAsGroup": 10003, "fsGroup": 2000, "runAsNonRoot": True},
                  volumes=[{"name": "cfg", "projected": {"defaultMode": 0o440, "sources": [
                               {"configMap": {"name": "cfg", "items": [{"key": "a.txt", "path": "dir/a.txt"}]}},
                               {"secret": {"name": "creds", "items": [{"key": "user", "path": "user"}]}}]}},
                           {"name": "scratch", "emptyDir": {}}])
    cluster.manifests.add(doc)
    pod = cluster.start_pod("Pod", "probe")
    assert pod.wait(60) == {"main": 0}, pod.logs()
    out = json.loads((pod.volumes["scratch"] / "out.json").read_text())
    assert (out["uid"], out["gid"], out["groups"]) == (10002, 10003, [2000])
    assert out["cwd"] == "/opt/app" and out["hostname"] == "probe" and out["env"]["E"] == "v"
    assert set(out["files"]) >= {"..data", "dir", "user"}
    assert out["a"] == "A" and out["data"]
    assert out["root_writable"] is False and out["tmp_writable"] is True
    assert f"{cluster.service_ip('db')} db db.default db.default.svc db.default.svc.cluster.local" in out["hosts"]
    assert not Path("/opt/app").exists(), "the image's folders never reach the machine"
    assert not Path("/run/kubelet-test").exists(), "a mount point behind /var/run -> /run stays in the container"


def test_run_as_non_root_refuses_root(cluster: Cluster) -> None:
    cluster.manifests.add(pod_doc({"args": ["-c", "pass"]}, securityContext={"runAsUser": 0, "runAsNonRoot": True}))
    with pytest.raises(KubeletError, match="runAsNonRoot"):
        cluster.start_pod("Pod", "probe")


def test_stop_sends_sigterm_then_kills_every_process_after_the_grace(cluster: Cluster) -> None:
    code = ("import signal, subprocess, sys, time\n"
            "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'], start_new_session=True)\n"
            "signal.signal(signal.SIGTERM, signal.SIG_IGN)\nprint('up', flush=True)\ntime.sleep(600)")
    cluster.manifests.add(pod_doc({"args": ["-c", code]}, terminationGracePeriodSeconds=1))
    pod = cluster.start_pod("Pod", "probe")
    container = pod.container()
    for _ in range(100):
        if "up" in pod.logs() and len(container.processes()) >= 2:
            break
        __import__("time").sleep(0.05)
    took = pod.stop()
    assert 0.9 < took < 5, took  # ignored SIGTERM: killed at the grace period
    assert container.processes() == [], "the child that left the group is gone too"


def test_deleting_a_pod_never_reaches_another_pods_processes(cluster: Cluster) -> None:
    """A finished container's mount namespace number is the kernel's to give again (the lowest free one, to
    the next namespace made): the kubelet holds each until its pod is deleted, so that deleting a pod whose
    container (or init container) has exited kills its own processes only, not those of a pod started
    since. Before, an upgrade's scheduler stop killed the api-server this way."""
    done = {**pod_doc({"args": ["-c", "pass"]}), "metadata": {"name": "done"}}
    running = {**pod_doc({"args": ["-c", "import time; print('up', flush=True); time.sleep(600)"]}),
               "metadata": {"name": "running"}}
    cluster.manifests.add(done, running)
    finished = cluster.start_pod("Pod", "done")
    assert finished.wait(60) == {"main": 0}
    other = cluster.start_pod("Pod", "running")
    for _ in range(200):
        if "up" in other.logs():
            break
        __import__("time").sleep(0.05)
    finished.stop()
    __import__("time").sleep(0.3)
    assert other.container().running, "deleting the finished pod killed the other pod's container"
    other.stop(grace=1)
