"""Run the pods of rendered manifests (`helm template` output) as local processes, the way a kubelet would.

No cluster, no container runtime: each container becomes a process with exactly its rendered env (values,
`$(VAR)` expansion, secretKeyRef/configMapKeyRef/fieldRef, envFrom), its volumes laid out as the kubelet
lays them out (ConfigMap/Secret/projected volumes with `items` paths, `..data` links and modes, emptyDirs,
claims), mounted at their mountPaths in a private mount namespace over an overlay of the machine's `/`
(read-only when readOnlyRootFilesystem), as its runAsUser/runAsGroup/fsGroup with no_new_privs, with the
pod name as hostname. All pods share one private network namespace; every Service name resolves (a
private /etc/hosts) to its own loopback address. See README.md here for every deviation from a cluster.

    cluster = Cluster(Manifests.from_text(helm_output), workdir, images={"apache/airflow": airflow_image(venv)})
    with cluster:
        cluster.expose("mvp-datasurface-postgresql", 5432, unix_socket=pg.socket_dir + "/.s.PGSQL.5432")
        cluster.run_job("mvp-datasurface-airflow-migrate-1", timeout=300)
        pod = cluster.start_pod("Deployment", "mvp-datasurface-airflow-api-server")
        pod.wait_ready(timeout=120)
        port = cluster.port_forward("mvp-datasurface-airflow-api-server", 8080)   # a port on 127.0.0.1
        ...
        pod.stop()                                   # SIGTERM, SIGKILL after terminationGracePeriodSeconds

Needs root (namespaces, mounts, changing user), `unshare`, `nsenter` and `mount` (util-linux).
"""

from __future__ import annotations

import base64
import datetime
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
RUNTIME = HERE / "kubelet_runtime.py"
PROXY = HERE / "kubelet_proxy.py"
DEFAULT_GRACE_SECONDS = 30  # Kubernetes' default terminationGracePeriodSeconds
SERVICE_NET = "127.0.0."  # Service addresses: 127.0.0.10, .11, ...
POD_NET = "127.0.1."  # pod addresses (each pod's hostname resolves to its own)


class KubeletError(RuntimeError):
    """What a kubelet would report as an event: CreateContainerConfigError, a failed probe, a timeout."""


# --- manifests -------------------------------------------------------------------------------------------


class Manifests:
    """The documents of a render, looked up by kind and name."""

    def __init__(self, docs: Iterable[dict[str, Any]]) -> None:
        self.docs = [d for d in docs if d]

    @classmethod
    def from_text(cls, text: str) -> Manifests:
        return cls(yaml.safe_load_all(text))

    def find(self, kind: str, name: str) -> dict[str, Any] | None:
        for doc in self.docs:
            if doc.get("kind") == kind and doc.get("metadata", {}).get("name") == name:
                return doc
        return None

    def get(self, kind: str, name: str) -> dict[str, Any]:
        doc = self.find(kind, name)
        if doc is None:
            raise KubeletError(f"{kind}/{name} is not in the manifests")
        return doc

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [d for d in self.docs if d.get("kind") == kind]

    def config_data(self, kind: str, name: str) -> dict[str, bytes] | None:
        """A ConfigMap's or Secret's keys as bytes (data, binaryData, stringData); None when absent."""
        doc = self.find(kind, name)
        if doc is None:
            return None
        out: dict[str, bytes] = {}
        if kind == "Secret":
            out.update({k: base64.b64decode(v) for k, v in (doc.get("data") or {}).items()})
            out.update({k: str(v).encode() for k, v in (doc.get("stringData") or {}).items()})
        else:
            out.update({k: str(v).encode() for k, v in (doc.get("data") or {}).items()})
            out.update({k: base64.b64decode(v) for k, v in (doc.get("binaryData") or {}).items()})
        return out

    def add(self, *docs: dict[str, Any]) -> None:
        """Objects that exist in the namespace without being rendered (an existingSecret, say)."""
        self.docs.extend(docs)


def secret(name: str, data: Mapping[str, str], namespace: str = "default") -> dict[str, Any]:
    """A Secret object (e.g. one a user creates with kubectl for an existingSecret value)."""
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": namespace},
            "type": "Opaque", "stringData": dict(data)}


def pod_template(doc: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(metadata, spec) of the pod a Pod, Deployment, StatefulSet, DaemonSet or Job makes."""
    if doc["kind"] == "Pod":
        return doc["metadata"], doc["spec"]
    template = doc["spec"]["template"]
    return template.get("metadata", {}), template["spec"]


# --- images ----------------------------------------------------------------------------------------------


@dataclass
class Image:
    """What a container image contributes: its env, folders, default user and workdir, and how its
    entrypoint turns the container's command/args into a process (`entrypoint(command, args)`).

    `signal_group`: SIGTERM goes to the container's whole process group (an init such as dumb-init in
    setsid mode forwards it so) rather than to its main process only; `signal_group_env` names the env
    var that switches this per container ("0": main process only), as DUMB_INIT_SETSID does."""

    env: dict[str, str]
    entrypoint: Callable[[list[str] | None, list[str]], list[str]]
    dirs: dict[str, tuple[int, int, int]] = field(default_factory=dict)  # path -> (uid, gid, mode)
    files: dict[str, str] = field(default_factory=dict)
    file_modes: dict[str, int] = field(default_factory=dict)  # modes of `files` other than 0644
    passwd: list[str] = field(default_factory=list)  # the image's own /etc/passwd lines (its users)
    uid: int = 0
    gid: int = 0
    workdir: str = "/"
    signal_group: bool = False
    signal_group_env: str | None = None
    # machine folders the image's content lives in (the venv standing in for it, the sources of an editable
    # install): bound read-only at their own paths after the pod's volumes, so that a volume over a parent
    # folder (an emptyDir on /tmp, where a CI clone may live) cannot hide them as it would hide nothing in
    # a real image
    content: list[str] = field(default_factory=list)


def venv_content(venv: Path) -> list[str]:
    """The venv and the repository's sources (the package is installed editable into the test venvs)."""
    return [str(venv.absolute()), str(Path(__file__).resolve().parents[2] / "src")]


def airflow_image(venv: Path) -> Image:
    """apache/airflow (3.x), emulated by a venv with Airflow and the providers: its env (AIRFLOW_HOME,
    HOME, PATH with the venv first), user airflow (50000, group 0), /opt/airflow as workdir, dumb-init
    (signals to the whole group), and its entrypoint: `bash`/`python` as the first arg run as such,
    anything else as `airflow <args>`; DUMB_INIT_SETSID as dumb-init reads it. The entrypoint's wait for
    the database (CONNECTION_CHECK_MAX_COUNT) is not emulated: start the database first."""
    bin_dir = str(venv / "bin")

    def entrypoint(command: list[str] | None, args: list[str]) -> list[str]:
        if command:
            return [*command, *args]
        if args and args[0] in ("bash", "python"):
            return [args[0] if args[0] == "bash" else f"{bin_dir}/python", *args[1:]]
        return [f"{bin_dir}/airflow", *args]

    return Image(
        env={"PATH": f"{bin_dir}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
             "AIRFLOW_HOME": "/opt/airflow", "AIRFLOW_USER_HOME_DIR": "/home/airflow", "HOME": "/home/airflow",
             "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", "PYTHONUNBUFFERED": "1", "DUMB_INIT_SETSID": "1"},
        entrypoint=entrypoint,
        dirs={"/opt/airflow": (50000, 0, 0o775), "/home/airflow": (50000, 0, 0o775)},
        passwd=["airflow:x:50000:0::/home/airflow:/bin/bash"], uid=50000, gid=0, workdir="/opt/airflow",
        signal_group=True, signal_group_env="DUMB_INIT_SETSID", content=venv_content(venv),
    )


def job_image(venv: Path) -> Image:
    """The DataSurface job image (image/Dockerfile), emulated by a venv holding the package: entrypoint
    `datasurface-job`, user 10001, HOME and TMPDIR /tmp."""
    bin_dir = str(venv / "bin")

    def entrypoint(command: list[str] | None, args: list[str]) -> list[str]:
        return [*command, *args] if command else [f"{bin_dir}/datasurface-job", *args]

    return Image(env={"PATH": f"{bin_dir}:/usr/local/bin:/usr/bin:/bin", "HOME": "/tmp", "TMPDIR": "/tmp",
                      "LANG": "C.UTF-8", "PYTHONUNBUFFERED": "1"},
                 entrypoint=entrypoint, passwd=["datasurface:x:10001:10001::/tmp:/usr/sbin/nologin"],
                 uid=10001, gid=10001, workdir="/tmp", content=venv_content(venv))


POSTGRES_ENTRYPOINT = r"""#!/bin/bash
# The postgres image's docker-entrypoint.sh, as far as the chart relies on it: first start initialises
# PGDATA (superuser POSTGRES_USER with POSTGRES_PASSWORD, local trust, scram-sha-256 over TCP), runs
# /docker-entrypoint-initdb.d/*.sh and *.sql on a socket-only server, then serves on all addresses.
set -Eeuo pipefail
if [ "${1:0:1}" = '-' ]; then set -- postgres "$@"; fi  # args only (-c ...): options of the server
if [ "${1:-postgres}" = postgres ] && [ ! -s "$PGDATA/PG_VERSION" ]; then
  mkdir -p "$PGDATA" && chmod 700 "$PGDATA"
  initdb --username="${POSTGRES_USER:-postgres}" --pwfile=<(printf '%s
' "$POSTGRES_PASSWORD")     -D "$PGDATA" -E UTF8 --locale=C >/dev/null
  printf 'host all all all scram-sha-256
' >>"$PGDATA/pg_hba.conf"
  pg_ctl -D "$PGDATA" -o "-c listen_addresses='' -c unix_socket_directories=/var/run/postgresql" -w start
  export PGPASSWORD="$POSTGRES_PASSWORD" PGHOST=/var/run/postgresql
  for f in /docker-entrypoint-initdb.d/*; do
    case "$f" in
      *.sh) if [ -x "$f" ]; then "$f"; else . "$f"; fi ;;
      *.sql) psql -v ON_ERROR_STOP=1 --username "${POSTGRES_USER:-postgres}" --no-password -f "$f" ;;
    esac
  done
  unset PGPASSWORD PGHOST
  pg_ctl -D "$PGDATA" -m fast -w stop >/dev/null
fi
[ "${1:-postgres}" = postgres ] && shift || true
exec postgres -c listen_addresses='*' -c unix_socket_directories=/var/run/postgresql "$@"
"""


def postgres_image(bin_dir: Path) -> Image:
    """postgres (official image), emulated by the machine's PostgreSQL binaries (Debian's 15; the chart
    pins another major) and POSTGRES_ENTRYPOINT: user postgres (999), PGDATA, the socket directory."""
    def entrypoint(command: list[str] | None, args: list[str]) -> list[str]:
        return [*command, *args] if command else ["/usr/local/bin/docker-entrypoint.sh", *(args or ["postgres"])]

    return Image(env={"PATH": f"{bin_dir}:/usr/local/bin:/usr/bin:/bin", "PGDATA": "/var/lib/postgresql/data",
                      "LANG": "C.UTF-8"},
                 entrypoint=entrypoint, files={"/usr/local/bin/docker-entrypoint.sh": POSTGRES_ENTRYPOINT},
                 file_modes={"/usr/local/bin/docker-entrypoint.sh": 0o755},
                 dirs={"/var/lib/postgresql": (999, 999, 0o755), "/var/run/postgresql": (999, 999, 0o3775)},
                 passwd=["postgres:x:999:999::/var/lib/postgresql:/bin/bash"], uid=999, gid=999)


# --- env -------------------------------------------------------------------------------------------------

_VAR_REF = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


def expand(text: str, env: Mapping[str, str]) -> str:
    """Kubernetes' $(VAR) expansion: defined names are replaced, undefined ones stay, `$$` is `$`."""
    def sub(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group(1)
        return env[name] if name in env else match.group(0)
    return _VAR_REF.sub(sub, text)


# --- processes -------------------------------------------------------------------------------------------


def _mnt_ns(pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/ns/mnt")
    except OSError:
        return None


def _pids_in_ns(ns: str) -> list[int]:
    """Every process in a mount namespace: a container's processes, also those that left its group."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and _mnt_ns(int(entry)) == ns:
            pids.append(int(entry))
    return pids


@dataclass
class Container:
    """One container of a pod: its process (the entrypoint after the runtime's exec), log file and spec."""

    name: str
    spec: dict[str, Any]
    env: dict[str, str]
    argv: list[str]
    log_path: Path
    image: Image
    proc: subprocess.Popen[bytes] | None = None
    ns: str | None = None  # its mount namespace: all of its processes
    # An open reference to that namespace, held until the pod is deleted: a namespace's number is reused as
    # soon as its last process is gone (the next one created gets it), and then `processes()` and the kill
    # would reach another container's processes, e.g. those of a container started after an init container.
    ns_fd: int | None = None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def exit_code(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait(self, timeout: float) -> int:
        assert self.proc is not None
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise KubeletError(f"container {self.name} still running after {timeout:.0f} s:\n"
                               f"{self.logs()[-3000:]}") from None

    def processes(self) -> list[int]:
        return _pids_in_ns(self.ns) if self.ns else []

    def hold_namespace(self) -> bool:
        """Take a reference to the mount namespace the process is in once it is not the machine's (unshare
        has run); False until then."""
        assert self.proc is not None
        try:
            fd = os.open(f"/proc/{self.proc.pid}/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
        except OSError:  # exited already: nothing of it to find later
            return self.proc.poll() is not None
        ns = os.readlink(f"/proc/self/fd/{fd}")
        if ns == _mnt_ns(os.getpid()):
            os.close(fd)
            return False
        self.ns, self.ns_fd = ns, fd
        return True

    def release(self) -> None:
        """The pod is deleted: its namespace's number may be used again."""
        if self.ns_fd is not None:
            os.close(self.ns_fd)
            self.ns_fd = None

    def signal(self, sig: int) -> None:
        """SIGTERM as the image's init delivers it; SIGKILL to every process of the container (its cgroup)."""
        if self.proc is None:
            return
        if sig == signal.SIGKILL:  # until the container's processes are gone, as a cgroup kill waits
            deadline = time.monotonic() + 10
            while True:
                targets = set(self.processes()) | ({self.proc.pid} if self.running else set())
                if not targets or time.monotonic() > deadline:
                    return
                for pid in targets:
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                self.proc.poll()  # reap the main process (its children are reaped by init)
                time.sleep(0.02)
        group = self.image.signal_group
        if self.image.signal_group_env and self.image.signal_group_env in self.env:
            group = self.env[self.image.signal_group_env] != "0"
        try:
            if group:
                os.killpg(self.proc.pid, sig)
            else:
                os.kill(self.proc.pid, sig)
        except ProcessLookupError:
            pass


class Pod:
    """A pod of a workload: its folder (volumes, logs), address, init containers and containers."""

    def __init__(self, cluster: Cluster, workload: dict[str, Any], name: str, ip: str) -> None:
        self.cluster = cluster
        self.workload = workload
        self.metadata, self.spec = pod_template(workload)
        self.name = name
        self.ip = ip
        self.dir = cluster.workdir / "pods" / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.volumes: dict[str, Path] = {}
        self.init_containers: dict[str, Container] = {}
        self.containers: dict[str, Container] = {}

    # security context ------------------------------------------------------------------------------

    def _user(self, spec: dict[str, Any], image: Image) -> tuple[int, int, list[int], bool]:
        pod_sc = self.spec.get("securityContext") or {}
        sc = spec.get("securityContext") or {}
        uid = sc.get("runAsUser", pod_sc.get("runAsUser", image.uid))
        gid = sc.get("runAsGroup", pod_sc.get("runAsGroup", image.gid))
        groups = sorted({*pod_sc.get("supplementalGroups", []),
                         *([pod_sc["fsGroup"]] if "fsGroup" in pod_sc else [])})
        if sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")) and uid == 0:
            raise KubeletError(f"{self.name}/{spec['name']}: CreateContainerConfigError: runAsNonRoot and "
                               f"the image runs as root")
        no_new_privs = sc.get("allowPrivilegeEscalation") is False
        return int(uid), int(gid), [int(g) for g in groups], no_new_privs

    # env ---------------------------------------------------------------------------------------------

    def _field(self, path: str) -> str:
        values = {"metadata.name": self.name, "metadata.namespace": self.cluster.namespace,
                  "spec.nodeName": "kubelet-emulation", "status.podIP": self.ip, "status.hostIP": self.ip,
                  "spec.serviceAccountName": self.spec.get("serviceAccountName", "default")}
        labels = re.fullmatch(r"metadata\.(labels|annotations)\['(.+)'\]", path)
        if labels:
            return str((self.metadata.get(labels.group(1)) or {}).get(labels.group(2), ""))
        if path not in values:
            raise KubeletError(f"{self.name}: fieldRef {path} is not emulated")
        return values[path]

    def _ref(self, kind: str, ref: dict[str, Any], what: str) -> str | None:
        data = self.cluster.manifests.config_data(kind, ref["name"])
        if data is None or ref["key"] not in data:
            if ref.get("optional"):
                return None
            missing = f"{kind} {ref['name']!r}" if data is None else f"key {ref['key']!r} of {kind} {ref['name']!r}"
            raise KubeletError(f"{self.name}: CreateContainerConfigError: {what}: {missing} not found")
        return data[ref["key"]].decode()

    def container_env(self, spec: dict[str, Any], image: Image | None = None) -> dict[str, str]:
        """The container's env as the kubelet gives it: the image's, HOSTNAME, envFrom, then env in order."""
        env: dict[str, str] = {}
        for source in spec.get("envFrom", []):
            prefix = source.get("prefix", "")
            for kind, key in (("ConfigMap", "configMapRef"), ("Secret", "secretRef")):
                if key in source:
                    data = self.cluster.manifests.config_data(kind, source[key]["name"])
                    if data is None and not source[key].get("optional"):
                        raise KubeletError(f"{self.name}: CreateContainerConfigError: {kind} "
                                           f"{source[key]['name']!r} not found")
                    env.update({prefix + k: v.decode() for k, v in (data or {}).items()})
        for entry in spec.get("env", []):
            name = entry["name"]
            if "value" in entry or "valueFrom" not in entry:
                env[name] = expand(str(entry.get("value", "")), env)
                continue
            source = entry["valueFrom"]
            value: str | None
            if "secretKeyRef" in source:
                value = self._ref("Secret", source["secretKeyRef"], name)
            elif "configMapKeyRef" in source:
                value = self._ref("ConfigMap", source["configMapKeyRef"], name)
            elif "fieldRef" in source:
                value = self._field(source["fieldRef"]["fieldPath"])
            else:
                raise KubeletError(f"{self.name}: env {name}: {sorted(source)} is not emulated")
            if value is not None:
                env[name] = value
        return {**(image.env if image else {}), "HOSTNAME": self.name, **env}

    # volumes -----------------------------------------------------------------------------------------

    def _atomic_dir(self, target: Path, files: dict[str, tuple[bytes, int]], gid: int | None) -> None:
        """The kubelet's AtomicWriter layout: files in a timestamped folder, `..data` linking to it, and a
        link per top-level name into `..data` (what an .airflowignore of `..*` exists for)."""
        target.mkdir(parents=True, exist_ok=True)
        stamp = datetime.datetime.now(datetime.UTC).strftime("..%Y_%m_%d_%H_%M_%S.") + uuid.uuid4().hex[:9]
        data_dir = target / stamp
        data_dir.mkdir()
        for path, (content, mode) in files.items():
            file = data_dir / path
            file.parent.mkdir(parents=True, exist_ok=True)
            file.write_bytes(content)
            os.chmod(file, mode)
            if gid is not None:
                os.chown(file, 0, gid)
        os.symlink(stamp, target / "..data")
        for top in sorted({p.split("/", 1)[0] for p in files}):
            os.symlink(f"..data/{top}", target / top)
        os.chmod(target, 0o755)

    def _source_files(self, kind: str, source: dict[str, Any], default_mode: int) -> dict[str, tuple[bytes, int]]:
        name = source.get("name") or source.get("secretName")
        data = self.cluster.manifests.config_data(kind, name)
        if data is None:
            if source.get("optional"):
                return {}
            raise KubeletError(f"{self.name}: volume: {kind} {name!r} not found (the pod stays ContainerCreating)")
        mode = source.get("defaultMode", default_mode)
        if "items" not in source:
            return {key: (value, mode) for key, value in data.items()}
        files = {}
        for item in source["items"]:
            if item["key"] not in data:
                if source.get("optional"):
                    continue
                raise KubeletError(f"{self.name}: volume: key {item['key']!r} not in {kind} {name!r}")
            files[item["path"]] = (data[item["key"]], item.get("mode", mode))
        return files

    def _make_volumes(self) -> None:
        fs_group = (self.spec.get("securityContext") or {}).get("fsGroup")
        claims = {t["metadata"]["name"] for t in self.workload.get("spec", {}).get("volumeClaimTemplates", [])}
        volumes = list(self.spec.get("volumes", [])) + [{"name": c, "persistentVolumeClaim": {"claimName": c}}
                                                        for c in claims]
        for volume in volumes:
            name = volume["name"]
            path = self.dir / "volumes" / name
            if "emptyDir" in volume:
                path.mkdir(parents=True, exist_ok=True)
                os.chmod(path, 0o777)  # the kubelet makes emptyDirs world-writable
            elif "configMap" in volume or "secret" in volume:
                kind = "ConfigMap" if "configMap" in volume else "Secret"
                source = volume["configMap" if kind == "ConfigMap" else "secret"]
                self._atomic_dir(path, self._source_files(kind, source, 0o644), fs_group)
            elif "projected" in volume:
                default_mode = volume["projected"].get("defaultMode", 0o644)
                files: dict[str, tuple[bytes, int]] = {}
                for source in volume["projected"]["sources"]:
                    for kind, key in (("ConfigMap", "configMap"), ("Secret", "secret")):
                        if key in source:
                            files.update(self._source_files(kind, source[key], default_mode))
                    if not ({"configMap", "secret"} & set(source)):
                        raise KubeletError(f"{self.name}: projected source {sorted(source)} is not emulated")
                self._atomic_dir(path, files, fs_group)
            elif "persistentVolumeClaim" in volume:
                claim = volume["persistentVolumeClaim"]["claimName"]
                # a claim template's volume is per pod; a named claim is the cluster's (both survive the pod)
                path = self.cluster.workdir / "claims" / (f"{claim}-{self.name}" if claim in claims else claim)
                path.mkdir(parents=True, exist_ok=True)
                if fs_group is not None:
                    os.chown(path, 0, fs_group)
                    os.chmod(path, 0o2775)
            else:
                raise KubeletError(f"{self.name}: volume {name}: {sorted(set(volume) - {'name'})} is not emulated")
            self.volumes[name] = path

    def _mounts(self, spec: dict[str, Any]) -> list[list[Any]]:
        mounts = []
        for m in spec.get("volumeMounts", []):
            source = self.volumes[m["name"]]
            if m.get("subPath"):
                source = source / m["subPath"]
            mounts.append([str(source), m["mountPath"], bool(m.get("readOnly"))])
        return mounts

    # running -----------------------------------------------------------------------------------------

    def _container(self, spec: dict[str, Any]) -> Container:
        image = self.cluster.image_for(spec["image"])
        env = self.container_env(spec, image)
        command = [expand(c, env) for c in spec["command"]] if spec.get("command") else None
        args = [expand(str(a), env) for a in spec.get("args", [])]
        return Container(name=spec["name"], spec=spec, env=env, argv=image.entrypoint(command, args),
                         log_path=self.dir / f"{spec['name']}.log", image=image)

    def _start(self, container: Container) -> None:
        spec, image = container.spec, container.image
        uid, gid, groups, no_new_privs = self._user(spec, image)
        sc = spec.get("securityContext") or {}
        runtime_spec = {
            "scratch": str(self.dir / "rootfs" / container.name), "hostname": self.name,
            "dirs": [[p, *v] for p, v in image.dirs.items()],
            "file_modes": image.file_modes,
            "files": {**image.files, "/etc/hosts": self.cluster.hosts_file(),
                      "/etc/passwd": Path("/etc/passwd").read_text() + "".join(f"{u}\n" for u in image.passwd)},
            "mounts": self._mounts(spec), "content": image.content,
            "read_only_root": bool(sc.get("readOnlyRootFilesystem")),
            "workdir": spec.get("workingDir", image.workdir), "uid": uid, "gid": gid, "groups": groups,
            "no_new_privs": no_new_privs, "argv": container.argv, "env": container.env,
        }
        spec_file = self.dir / f"{container.name}.runtime.json"
        fd = os.open(spec_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # it holds the container's env
        os.write(fd, json.dumps(runtime_spec).encode())
        os.close(fd)
        shutil.rmtree(self.dir / "rootfs" / container.name, ignore_errors=True)
        log = open(container.log_path, "ab")  # the child process keeps it open
        container.proc = subprocess.Popen(
            ["nsenter", f"--net=/proc/{self.cluster.pause_pid}/ns/net", "--", "unshare", "--mount", "--uts", "--",
             sys.executable, str(RUNTIME), str(spec_file)],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")})
        log.close()
        deadline = time.monotonic() + 10
        while not container.hold_namespace():  # the mount namespace is the container's once unshare has run
            if time.monotonic() > deadline:
                raise KubeletError(f"{self.name}/{container.name}: no mount namespace of its own after 10 s")
            time.sleep(0.01)

    def start(self, init_timeout: float = 600) -> Pod:
        """Lay out the volumes, run the init containers one by one to success, then start the containers."""
        self._make_volumes()
        for spec in self.spec.get("initContainers", []):
            container = self._container(spec)
            self.init_containers[spec["name"]] = container
            self._start(container)
            code = container.wait(init_timeout)
            if code != 0:
                raise KubeletError(f"{self.name}: init container {spec['name']} exited {code} (Init:Error):\n"
                                   f"{container.logs()[-3000:]}")
        for spec in self.spec["containers"]:
            container = self._container(spec)
            self.containers[spec["name"]] = container
            self._start(container)
        return self

    def container(self, name: str | None = None) -> Container:
        return self.containers[name] if name else next(iter(self.containers.values()))

    def logs(self, name: str | None = None) -> str:
        return self.container(name).logs()

    def all_logs(self) -> str:
        return "".join(c.logs() for c in [*self.init_containers.values(), *self.containers.values()])

    def wait(self, timeout: float) -> dict[str, int]:
        """Wait for every container to exit (a Job's pod); their exit codes."""
        return {name: c.wait(timeout) for name, c in self.containers.items()}

    # probes ------------------------------------------------------------------------------------------

    def _port(self, spec: dict[str, Any], port: int | str) -> int:
        if isinstance(port, int) or str(port).isdigit():
            return int(port)
        for p in spec.get("ports", []):
            if p.get("name") == port:
                return int(p["containerPort"])
        raise KubeletError(f"{self.name}/{spec['name']}: no container port named {port!r}")

    def probe(self, kind: str, name: str | None = None) -> bool:
        """Run the container's startupProbe/readinessProbe/livenessProbe once (True: it passed)."""
        container = self.container(name)
        probe = container.spec.get(kind)
        if probe is None:
            return container.running
        timeout = probe.get("timeoutSeconds", 1)
        if "httpGet" in probe:
            get = probe["httpGet"]
            url = f"http://{self.ip}:{self._port(container.spec, get['port'])}{get.get('path', '/')}"
            code = ("import sys, urllib.request\ntry:\n urllib.request.urlopen(sys.argv[1], timeout=float(sys.argv[2]))"
                    "\nexcept Exception as e:\n print(e); sys.exit(1)")
            proc = self.cluster.netns_run([sys.executable, "-c", code, url, str(timeout)], timeout=timeout + 5)
            return proc.returncode == 0
        if "exec" in probe:
            return self.exec(probe["exec"]["command"], name=name, timeout=timeout).returncode == 0
        if "tcpSocket" in probe:
            port = self._port(container.spec, probe["tcpSocket"]["port"])
            code = ("import socket, sys\n"
                    "socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=float(sys.argv[3]))")
            return self.cluster.netns_run([sys.executable, "-c", code, self.ip, str(port), str(timeout)],
                                          timeout=timeout + 5).returncode == 0
        raise KubeletError(f"{self.name}: probe {sorted(probe)} is not emulated")

    def wait_ready(self, timeout: float, name: str | None = None) -> float:
        """Until the startupProbe (else readinessProbe, else liveness) passes; seconds it took."""
        container = self.container(name)
        kind = next((k for k in ("startupProbe", "readinessProbe", "livenessProbe") if k in container.spec), None)
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            if not container.running:
                raise KubeletError(f"{self.name}/{container.name} exited {container.exit_code} before it was "
                                   f"ready:\n{container.logs()[-4000:]}")
            if kind is None or self.probe(kind, name):
                return time.monotonic() - start
            time.sleep(1)
        raise KubeletError(f"{self.name}/{container.name}: {kind} failing after {timeout:.0f} s:\n"
                           f"{container.logs()[-4000:]}")

    def exec(self, command: Sequence[str], name: str | None = None,
             timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """`kubectl exec`: the command in the container's namespaces and root, as its user, with its env."""
        container = self.container(name)
        if not container.running:
            raise KubeletError(f"{self.name}/{container.name} is not running")
        uid, gid, groups, _ = self._user(container.spec, container.image)
        setpriv = ["setpriv", f"--reuid={uid}", f"--regid={gid}",
                   f"--groups={','.join(map(str, groups))}" if groups else "--clear-groups"]
        argv = ["nsenter", "-t", str(container.proc.pid), "-m", "-u", "-n", "-r", "-w", "--",  # type: ignore[union-attr]
                *setpriv, "env", "-i", *[f"{k}={v}" for k, v in container.env.items()], *command]
        try:
            return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
        except subprocess.TimeoutExpired:
            return subprocess.CompletedProcess(argv, 124, "", f"timed out after {timeout} s")

    # stopping ----------------------------------------------------------------------------------------

    def stop(self, grace: float | None = None) -> float:
        """Delete the pod: SIGTERM to every container (as its image's init delivers it), SIGKILL to all
        their processes after terminationGracePeriodSeconds. Returns the seconds until all had exited."""
        grace = float(self.spec.get("terminationGracePeriodSeconds", DEFAULT_GRACE_SECONDS) if grace is None else grace)
        running = [c for c in self.containers.values() if c.running]
        start = time.monotonic()
        for c in running:
            c.signal(signal.SIGTERM)
        deadline = start + grace
        while time.monotonic() < deadline and any(c.running or c.processes() for c in running):
            time.sleep(0.05)
        took = time.monotonic() - start
        for c in [*self.init_containers.values(), *self.containers.values()]:
            c.signal(signal.SIGKILL)
            if c.proc is not None:
                c.proc.wait(10)
        self.release()
        return took

    def release(self) -> None:
        """Gone from the node: its containers' namespaces are let go."""
        for c in [*self.init_containers.values(), *self.containers.values()]:
            c.release()
        self.cluster.pods.pop(self.name, None)


# --- the node --------------------------------------------------------------------------------------------


class Cluster:
    """One node and its namespace: the pods, the Services' addresses and the network namespace they share.

    `images` maps an image repository (the image reference without its tag or digest) to its emulation."""

    def __init__(self, manifests: Manifests, workdir: Path, images: Mapping[str, Image],
                 namespace: str = "default") -> None:
        self.manifests = manifests
        self.workdir = workdir
        self.images = dict(images)
        self.namespace = namespace
        self.pods: dict[str, Pod] = {}
        self.pause_pid = 0
        self._pause: subprocess.Popen[bytes] | None = None
        self._proxies: list[subprocess.Popen[bytes]] = []
        self._service_ips: dict[str, str] = {}
        self._pod_ips: dict[str, str] = {}
        self._lock = threading.Lock()  # pods start in threads (start_pods)

    # lifecycle ---------------------------------------------------------------------------------------

    def __enter__(self) -> Cluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> Cluster:
        """The network namespace (held by a pause process, like a pod's pause container), lo up."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._pause = subprocess.Popen(["unshare", "--net", "--", "sleep", "infinity"], start_new_session=True)
        self.pause_pid = self._pause.pid
        deadline = time.monotonic() + 10
        while os.readlink(f"/proc/{self.pause_pid}/ns/net") == os.readlink("/proc/self/ns/net"):
            if time.monotonic() > deadline:
                raise KubeletError("the network namespace was not created")
            time.sleep(0.01)
        self.netns_run(["ip", "link", "set", "lo", "up"], check=True)
        for service in self.manifests.of_kind("Service"):
            self.service_ip(service["metadata"]["name"])
        for svc in self.manifests.of_kind("Service"):  # a Service whose port is not its pods' port
            for port in svc["spec"].get("ports", []):
                target = self._target_port(svc, port)
                if target != port["port"]:
                    self._proxy(["--listen", f"{self.service_ip(svc['metadata']['name'])}:{port['port']}",
                                 "--to", f"127.0.0.1:{target}"])
        return self

    def _target_port(self, svc: dict[str, Any], port: dict[str, Any]) -> int:
        """A Service port's targetPort as a number (a name is looked up in the selected pods' ports)."""
        target = port.get("targetPort", port["port"])
        if isinstance(target, int) or str(target).isdigit():
            return int(target)
        selector = svc["spec"].get("selector") or {}
        for doc in self.manifests.docs:
            if doc.get("kind") not in ("Pod", "Deployment", "StatefulSet", "DaemonSet", "Job"):
                continue
            metadata, spec = pod_template(doc)
            if selector.items() <= (metadata.get("labels") or {}).items():
                for c in spec.get("containers", []):
                    for p in c.get("ports", []):
                        if p.get("name") == target:
                            return int(p["containerPort"])
        raise KubeletError(f"Service {svc['metadata']['name']}: no selected pod has a port named {target!r}")

    def stop(self) -> None:
        self.stop_pods(list(self.pods.values()), grace=5)
        for proc in self._proxies:
            proc.terminate()
            proc.wait(10)
        if self._pause is not None:
            self._pause.kill()
            self._pause.wait(10)
            self._pause = None

    # addresses ---------------------------------------------------------------------------------------

    def service_ip(self, name: str) -> str:
        if name not in self._service_ips:
            self._service_ips[name] = f"{SERVICE_NET}{10 + len(self._service_ips)}"
        return self._service_ips[name]

    def hosts_file(self) -> str:
        with self._lock:
            return self._hosts_file()

    def _hosts_file(self) -> str:
        lines = ["127.0.0.1 localhost", "::1 localhost ip6-localhost ip6-loopback"]
        domain = f"{self.namespace}.svc.cluster.local"
        for name, ip in self._service_ips.items():
            lines.append(f"{ip} {name} {name}.{self.namespace} {name}.{self.namespace}.svc {name}.{domain}")
        for name, ip in self._pod_ips.items():
            lines.append(f"{ip} {name}")
        return "\n".join(lines) + "\n"

    def netns_run(self, argv: Sequence[str], timeout: float = 30, check: bool = False
                  ) -> subprocess.CompletedProcess[str]:
        """A command of the machine's, in the cluster's network namespace (probes, ip)."""
        return subprocess.run(["nsenter", f"--net=/proc/{self.pause_pid}/ns/net", "--", *argv],
                              capture_output=True, text=True, timeout=timeout, check=check)

    def _proxy(self, args: list[str], pass_fds: Sequence[int] = ()) -> None:
        proc = subprocess.Popen(["nsenter", f"--net=/proc/{self.pause_pid}/ns/net", "--", sys.executable,
                                 str(PROXY), *args], stdout=subprocess.PIPE, pass_fds=pass_fds,
                                start_new_session=True)
        assert proc.stdout is not None
        if proc.stdout.readline().strip() != b"ready":
            raise KubeletError(f"proxy {args} did not start")
        self._proxies.append(proc)

    def expose(self, service: str, port: int, *, unix_socket: str | None = None,
               tcp: tuple[str, int] | None = None) -> str:
        """Route a Service's port to a server outside the cluster (one the test started itself); returns
        the Service's address. Its pods are then not to be started."""
        target = ["--to-unix", unix_socket] if unix_socket else ["--to", f"{tcp[0]}:{tcp[1]}"]  # type: ignore[index]
        ip = self.service_ip(service)
        self._proxy(["--listen", f"{ip}:{port}", *target])
        return ip

    def port_forward(self, service: str, port: int) -> int:
        """`kubectl port-forward service/NAME PORT`: a port on the machine's 127.0.0.1 reaching it."""
        listener = socket.create_server(("127.0.0.1", 0))
        try:
            self._proxy(["--listen-fd", str(listener.fileno()), "--to", f"{self.service_ip(service)}:{port}"],
                        pass_fds=[listener.fileno()])
            return int(listener.getsockname()[1])
        finally:
            listener.close()

    # pods --------------------------------------------------------------------------------------------

    def image_for(self, reference: str) -> Image:
        repository = re.sub(r"(@sha256:[0-9a-f]+|:[^:/]+)$", "", reference)
        if repository not in self.images:
            raise KubeletError(f"image {reference}: no emulation for {repository} (ErrImagePull)")
        return self.images[repository]

    def _pod_name(self, doc: dict[str, Any]) -> str:
        name: str = doc["metadata"]["name"]
        if doc["kind"] == "Pod":
            return name
        if doc["kind"] == "StatefulSet":
            return f"{name}-0"
        return f"{name}-{uuid.uuid4().hex[:5]}"

    def start_pod(self, kind: str, name: str, init_timeout: float = 600) -> Pod:
        """The (first) pod of a workload: init containers run to success, then its containers start."""
        doc = self.manifests.get(kind, name)
        with self._lock:
            pod_name = self._pod_name(doc)
            ip = self._pod_ips.setdefault(pod_name, f"{POD_NET}{10 + len(self._pod_ips)}")
            pod = Pod(self, doc, pod_name, ip)
            self.pods[pod_name] = pod
        try:
            return pod.start(init_timeout=init_timeout)
        except BaseException:
            pod.stop(grace=0)
            raise

    def start_pods(self, workloads: Sequence[tuple[str, str]], init_timeout: float = 600) -> list[Pod]:
        """Several workloads' pods at once, as Kubernetes starts them (each waits in its init containers)."""
        with ThreadPoolExecutor(max_workers=len(workloads) or 1) as pool:
            futures = [pool.submit(self.start_pod, kind, name, init_timeout) for kind, name in workloads]
            return [f.result() for f in futures]

    def stop_pods(self, pods: Iterable[Pod], grace: float | None = None) -> dict[str, float]:
        """Delete several pods at once; seconds each took to stop."""
        pods = list(pods)
        with ThreadPoolExecutor(max_workers=len(pods) or 1) as pool:
            return dict(zip([p.name for p in pods], pool.map(lambda p: p.stop(grace), pods), strict=True))

    def run_job(self, name: str, timeout: float = 600) -> Pod:
        """A Job's pod to completion (one try: backoffLimit is not emulated); KubeletError unless all
        containers exit 0."""
        pod = self.start_pod("Job", name, init_timeout=timeout)
        codes = pod.wait(timeout)
        pod.release()
        if any(codes.values()):
            raise KubeletError(f"Job {name} failed: {codes}:\n{pod.all_logs()[-4000:]}")
        return pod
