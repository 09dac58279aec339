"""DataSurface DAGs for one platform, driven by `platform.json` next to this file.

The chart ships this module unchanged in every platform's ConfigMap, beside that platform's settings
(`platform.json`, documented in README.md here). At import it validates the settings and defines:

- `<platform lower>__<Store>_ingestion`, one per store: `datasurface-job merge` for the store, then
  `retrigger` (runs only when `merge` was skipped, i.e. the job exited 10: it finished a batch an earlier
  run left open, so the DAG runs again at once for a fresh snapshot) and `done` (an empty task whose
  `upstream_failed` state makes the DAG run fail when `merge` fails: a run's state follows its leaves).
  With `storesPerTask` N > 1 instead: `<platform lower>__group<k>_ingestion`, one per group of at most N
  stores (in the listed order), whose `merge` merges every store of its group in one job.
- `<platform lower>_infrastructure`: `datasurface-job setup` (validate the model, create or evolve the
  platform's schema, tables and views).

The job runs in a pod (KubernetesPodOperator, `"runner": "kubernetes"`) or as a subprocess on the Airflow
worker (`"runner": "local"`); the outcome is read from the exit status only (0 done, 10 run again, other
failure), never from logs. Parsing touches no database, network or model repository.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import signal
import subprocess
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from airflow.sdk import DAG, BaseOperator

log = logging.getLogger(__name__)

SETTINGS_FILE = "platform.json"
SETTINGS_VERSION = 1
EXIT_OK = 0
EXIT_RUN_AGAIN = 10  # the job finished a batch left open by an interrupted run: run again now
JOB_COMMAND = "datasurface-job"  # the image's entrypoint; on PATH for the local runner
MODEL_MOUNT = "/model"
START_DATE = datetime(2024, 1, 1, tzinfo=UTC)
SLACK_TIMEOUT_SECONDS = 10
EXECUTION_TIMEOUT_SECONDS = 3600  # default run time limit of a job task (executionTimeoutSeconds)
EXECUTION_TIMEOUT_RANGE = (60, 7 * 24 * 3600)  # at least a minute, at most a week
MAX_STORES_PER_TASK = 1000
STOP_GRACE_SECONDS = 10  # local runner: SIGTERM, then SIGKILL after this long

# The worker's env the local runner's job inherits: what a process needs (PATH, locale, time zone, HOME,
# TMPDIR, CA bundles, proxies), libpq's PG* and git's GIT_* settings and the DATASURFACE_* ones, plus the
# platform's secretEnv names. Nothing else: a worker's env holds Airflow's own secrets (Fernet key, JWT
# secret, metadata database URL), which the job must not see.
_INHERITED_ENV = frozenset({"PATH", "HOME", "TMPDIR", "LANG", "LANGUAGE", "TZ", "USER", "LOGNAME",
                            "SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE", "HTTP_PROXY", "HTTPS_PROXY",
                            "NO_PROXY", "http_proxy", "https_proxy", "no_proxy"})
_INHERITED_PREFIXES = ("LC_", "PG", "GIT_", "DATASURFACE_")
# libpq's login settings: on the chart's Airflow containers they hold Airflow's own metadata login
# (the job logs in with its credentials' X_USER/X_PASSWORD). TLS settings (PGSSLMODE, ...) pass.
_WITHHELD_PG = frozenset({"PGUSER", "PGPASSWORD", "PGPASSFILE", "PGSERVICE", "PGSERVICEFILE", "PGDATABASE",
                          "PGHOST", "PGHOSTADDR", "PGPORT"})

_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*")  # platforms and stores (the model's naming rule)
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_K8S_NAME = re.compile(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?")  # DNS-1123 subdomain
_POOL_NAME = re.compile(r"[A-Za-z0-9_.-]{1,256}")
_PULL_POLICIES = ("Always", "IfNotPresent", "Never")


class PlatformSettingsError(ValueError):
    """platform.json is missing, not JSON, or not valid settings; the message names each problem."""


# --- settings ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SecretEnv:
    """An env var of the job taken from a Kubernetes Secret (secretKeyRef)."""

    name: str
    secret: str
    key: str
    optional: bool = False


@dataclass(frozen=True)
class SecretMount:
    """One key of a Kubernetes Secret mounted as a file in the job pod (e.g. a database CA certificate)."""

    secret: str
    key: str
    mount_path: str  # the folder; the file is <mount_path>/<path>
    path: str


@dataclass(frozen=True)
class ModelSettings:
    repo: str
    ref: str | None = None
    path: str = "datasurface.yaml"


@dataclass(frozen=True)
class MergeSettings:
    host: str
    database: str
    credential: str
    port: int = 5432


@dataclass(frozen=True)
class KubernetesSettings:
    image: str
    namespace: str | None = None
    image_pull_policy: str = "IfNotPresent"
    image_pull_secrets: tuple[str, ...] = ()
    service_account_name: str | None = None
    resources: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    labels: Mapping[str, str] = field(default_factory=dict)
    startup_timeout_seconds: int = 300
    model_config_map: str | None = None
    security_context: Mapping[str, Any] = field(default_factory=dict)
    container_security_context: Mapping[str, Any] = field(default_factory=dict)
    secret_mounts: tuple[SecretMount, ...] = ()
    node_selector: Mapping[str, str] = field(default_factory=dict)
    tolerations: tuple[Mapping[str, Any], ...] = ()
    affinity: Mapping[str, Any] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class PlatformSettings:
    platform: str
    mode: str
    stores: tuple[str, ...]
    model: ModelSettings
    merge: MergeSettings
    schedule: str | None = "@hourly"
    infrastructure_schedule: str | None = "@daily"
    runner: str = "kubernetes"
    retries: int = 2
    retry_delay_seconds: float = 300
    execution_timeout_seconds: int = EXECUTION_TIMEOUT_SECONDS
    stores_per_task: int = 1
    parallel_stores: int = 1
    deferrable: bool = False  # KubernetesPodOperator tasks hand the wait for their pod to the triggerer
    pool: str | None = None  # the Airflow pool of the job tasks; None: default_pool
    secret_env: tuple[SecretEnv, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    slack_webhook_env: str | None = None
    kubernetes: KubernetesSettings | None = None

    @property
    def id_prefix(self) -> str:
        """The platform name as used in DAG ids, schema and Kubernetes names: lower case."""
        return self.platform.lower()

    def ingestion_dag_id(self, store: str) -> str:
        return f"{self.id_prefix}__{store}_ingestion"

    @property
    def groups(self) -> list[tuple[str, ...]]:
        """The stores in groups of at most `stores_per_task`, in the listed order (group k is index k-1):
        stores added at the end of the list leave the earlier groups as they were."""
        n = self.stores_per_task
        return [self.stores[i:i + n] for i in range(0, len(self.stores), n)]

    def group_dag_id(self, k: int) -> str:
        return f"{self.id_prefix}__group{k}_ingestion"

    def group_timeout_seconds(self, stores: int) -> int:
        """A group task's run time limit: executionTimeoutSeconds for each round of `parallel_stores`
        stores, at most a week."""
        rounds = -(-stores // self.parallel_stores)
        return min(self.execution_timeout_seconds * rounds, EXECUTION_TIMEOUT_RANGE[1])

    @property
    def infrastructure_dag_id(self) -> str:
        return f"{self.id_prefix}_infrastructure"

    def job_env(self) -> dict[str, str]:
        """The job's non-secret settings: the DATASURFACE_* env vars of the job and `env` (e.g. libpq's
        PGSSLMODE); secrets come from `secret_env`."""
        env = {
            "DATASURFACE_MODEL": self.model.repo,
            "DATASURFACE_MODEL_PATH": self.model.path,
            "DATASURFACE_MERGE_HOST": self.merge.host,
            "DATASURFACE_MERGE_PORT": str(self.merge.port),
            "DATASURFACE_MERGE_DATABASE": self.merge.database,
            "DATASURFACE_MERGE_CREDENTIAL": self.merge.credential,
        }
        if self.model.ref:
            env["DATASURFACE_MODEL_REF"] = self.model.ref
        return {**self.env, **env}

    def merge_args(self, store: str) -> list[str]:
        return ["merge", "--platform", self.platform, "--mode", self.mode, "--store", store]

    def group_merge_args(self, stores: Sequence[str]) -> list[str]:
        """A group's merge. `--parallel` is always given: a job image too old to merge groups refuses the
        option (exit 2) rather than merging only the last `--store`, as its parser would."""
        args = ["merge", "--platform", self.platform, "--mode", self.mode, "--parallel", str(self.parallel_stores)]
        for store in stores:
            args += ["--store", store]
        return args

    def setup_args(self) -> list[str]:
        args = ["setup", "--platform", self.platform, "--mode", self.mode]
        for store in self.stores:
            args += ["--store", store]
        return args


class _Reader:
    """Reads one JSON object, collecting every problem as `<path>: <what is wrong>`."""

    def __init__(self, errors: list[str], data: Any, path: str) -> None:
        self.errors = errors
        self.path = path
        self.data: dict[str, Any] = data if isinstance(data, dict) else {}
        self.is_object = isinstance(data, dict)  # if not, its missing keys are not reported too
        if not self.is_object:
            self.fail(f"must be an object (got {_kind(data)})")

    def where(self, key: str | int | None = None) -> str:
        if key is None:
            return self.path or "(top level)"
        if isinstance(key, int):
            return f"{self.path}[{key}]"
        return f"{self.path}.{key}" if self.path else key

    def fail(self, problem: str, key: str | int | None = None) -> None:
        self.errors.append(f"{self.where(key)}: {problem}")

    def done(self, known: Sequence[str]) -> None:
        for key in self.data:
            if key not in known:
                self.fail(f"unknown key (known keys: {', '.join(known)})", key)

    def value(self, key: str, required: bool, default: Any) -> Any:
        if key not in self.data:
            if required and self.is_object:
                self.fail("required", key)
            return default
        return self.data[key]

    def string(self, key: str, *, required: bool = False, default: str | None = None,
               nullable: bool = False, pattern: re.Pattern[str] | None = None,
               choices: Sequence[str] = ()) -> Any:
        value = self.value(key, required, default)
        if value is None and (nullable or key not in self.data):
            return value
        if not isinstance(value, str) or not value:
            self.fail(f"must be a non-empty string{' or null' if nullable else ''} (got {_kind(value)})", key)
        elif choices and value not in choices:
            self.fail(f"must be one of {', '.join(choices)} (got {value!r})", key)
        elif pattern is not None and not pattern.fullmatch(value):
            self.fail(f"{value!r} is not a valid name (pattern {pattern.pattern})", key)
        return value

    def integer(self, key: str, *, default: int, minimum: int, maximum: int | None = None) -> int:
        value = self.value(key, False, default)
        if isinstance(value, bool) or not isinstance(value, int):
            self.fail(f"must be an integer (got {_kind(value)})", key)
            return default
        if value < minimum or (maximum is not None and value > maximum):
            bound = f"between {minimum} and {maximum}" if maximum is not None else f">= {minimum}"
            self.fail(f"must be {bound} (got {value})", key)
        return value

    def number(self, key: str, *, default: float, minimum: float) -> float:
        value = self.value(key, False, default)
        if isinstance(value, bool) or not isinstance(value, int | float):
            self.fail(f"must be a number (got {_kind(value)})", key)
            return default
        if value < minimum:
            self.fail(f"must be >= {minimum} (got {value})", key)
        return value

    def boolean(self, key: str, *, default: bool) -> bool:
        value = self.value(key, False, default)
        if not isinstance(value, bool):
            self.fail(f"must be true or false (got {_kind(value)})", key)
            return default
        return value

    def mapping(self, key: str, *, values: type | tuple[type, ...] = object) -> dict[str, Any]:
        value = self.value(key, False, {})
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.fail(f"must be an object (got {_kind(value)})", key)
            return {}
        for k, v in value.items():
            if not isinstance(v, values):
                self.fail(f"must be {_kind_name(values)} (got {_kind(v)})", f"{key}.{k}")
        return value

    def items(self, key: str, *, required: bool = False) -> list[Any]:
        value = self.value(key, required, [])
        if value is None:
            return []
        if not isinstance(value, list):
            self.fail(f"must be a list (got {_kind(value)})", key)
            return []
        return value

    def child(self, key: str | int, data: Any) -> _Reader:
        return _Reader(self.errors, data, self.where(key))


def _kind(value: Any) -> str:
    return {dict: "an object", list: "a list", str: f"the string {value!r}", bool: f"{value}".lower(),
            type(None): "null"}.get(type(value), f"{type(value).__name__} {value!r}")


def _kind_name(types: type | tuple[type, ...]) -> str:
    names = {str: "a string", int: "an integer", float: "a number", dict: "an object", list: "a list"}
    seq = types if isinstance(types, tuple) else (types,)
    return " or ".join(names.get(t, t.__name__) for t in seq)


_TOP_KEYS = ("version", "platform", "mode", "stores", "schedule", "infrastructureSchedule", "runner",
             "retries", "retryDelaySeconds", "executionTimeoutSeconds", "storesPerTask", "parallelStores",
             "deferrable", "pool", "model", "merge", "secretEnv", "env", "slackWebhookEnv", "kubernetes")
_K8S_KEYS = ("namespace", "image", "imagePullPolicy", "imagePullSecrets", "serviceAccountName", "resources",
             "labels", "startupTimeoutSeconds", "modelConfigMap", "securityContext",
             "containerSecurityContext", "secretMounts", "nodeSelector", "tolerations", "affinity", "annotations")


def parse_settings(data: Any) -> PlatformSettings:
    """Validate decoded platform.json; raises PlatformSettingsError listing every problem."""
    errors: list[str] = []
    top = _Reader(errors, data, "")
    version = top.value("version", True, SETTINGS_VERSION)
    if "version" in top.data and (isinstance(version, bool) or version != SETTINGS_VERSION):
        top.fail(f"must be {SETTINGS_VERSION} (got {_kind(version)}): this DAG module reads version "
                 f"{SETTINGS_VERSION} only", "version")
    platform = top.string("platform", required=True, pattern=_NAME)
    if isinstance(platform, str) and len(platform) > 63:
        top.fail("must be at most 63 characters (it names a PostgreSQL schema)", "platform")
    mode = top.string("mode", required=True, choices=("live", "forensic"))
    runner = top.string("runner", default="kubernetes", choices=("kubernetes", "local"))

    stores: list[str] = []
    raw_stores = top.items("stores", required=True)
    if "stores" in top.data and isinstance(raw_stores, list) and not raw_stores:
        top.fail("must name at least one store", "stores")
    for i, store in enumerate(raw_stores):
        if not isinstance(store, str) or not _NAME.fullmatch(store) or len(store) > 40:
            top.fail(f"must be a store name: letters, digits, _, starting with a letter, at most 40 "
                     f"characters (got {_kind(store)})", f"stores[{i}]")
        elif store in stores:
            top.fail(f"duplicate store {store!r}", f"stores[{i}]")
        else:
            stores.append(store)

    schedule = top.string("schedule", default="@hourly", nullable=True)
    infra_schedule = top.string("infrastructureSchedule", default="@daily", nullable=True)
    retries = top.integer("retries", default=2, minimum=0)
    retry_delay = top.number("retryDelaySeconds", default=300, minimum=0)
    low, high = EXECUTION_TIMEOUT_RANGE
    execution_timeout = top.integer("executionTimeoutSeconds", default=EXECUTION_TIMEOUT_SECONDS, minimum=low,
                                    maximum=high)
    stores_per_task = top.integer("storesPerTask", default=1, minimum=1, maximum=MAX_STORES_PER_TASK)
    parallel_stores = top.integer("parallelStores", default=1, minimum=1, maximum=MAX_STORES_PER_TASK)
    deferrable = top.boolean("deferrable", default=False)
    if deferrable and runner != "kubernetes":
        top.fail("only the kubernetes runner's pod tasks can be deferred (a local job runs inside its task)",
                 "deferrable")
    pool = top.string("pool", nullable=True, pattern=_POOL_NAME)

    m = top.child("model", top.value("model", True, {}))
    model = ModelSettings(repo=m.string("repo", required=True), ref=m.string("ref", nullable=True),
                          path=m.string("path", default="datasurface.yaml"))
    m.done(("repo", "ref", "path"))

    g = top.child("merge", top.value("merge", True, {}))
    merge = MergeSettings(host=g.string("host", required=True), database=g.string("database", required=True),
                          credential=g.string("credential", required=True),
                          port=g.integer("port", default=5432, minimum=1, maximum=65535))
    g.done(("host", "port", "database", "credential"))

    secret_env: list[SecretEnv] = []
    for i, raw in enumerate(top.items("secretEnv")):
        e = top.child(f"secretEnv[{i}]", raw)
        entry = SecretEnv(name=e.string("name", required=True, pattern=_ENV_NAME),
                          secret=e.string("secret", required=True, pattern=_K8S_NAME),
                          key=e.string("key", required=True), optional=e.boolean("optional", default=False))
        e.done(("name", "secret", "key", "optional"))
        if entry.name in {s.name for s in secret_env}:
            e.fail(f"duplicate env var {entry.name!r}", "name")
        elif isinstance(entry.name, str) and entry.name.startswith("DATASURFACE_") \
                and entry.name in _job_env_names():
            e.fail(f"{entry.name} is set from the model/merge settings, not from a Secret", "name")
        secret_env.append(entry)

    env = top.mapping("env", values=str)
    for name in env:
        if not _ENV_NAME.fullmatch(name):
            top.fail("is not an env var name", f"env.{name}")
        elif name in _job_env_names() or name in {s.name for s in secret_env}:
            top.fail("is set from the model/merge settings or secretEnv", f"env.{name}")

    slack = top.string("slackWebhookEnv", nullable=True, pattern=_ENV_NAME)

    kubernetes: KubernetesSettings | None = None
    if "kubernetes" in top.data or runner == "kubernetes":
        kubernetes = _parse_kubernetes(top.child("kubernetes", top.value("kubernetes", runner == "kubernetes",
                                                                         {})))
    top.done(_TOP_KEYS)

    if errors:
        raise PlatformSettingsError("; ".join(errors))
    return PlatformSettings(platform=platform, mode=mode, stores=tuple(stores), model=model, merge=merge,
                            schedule=schedule, infrastructure_schedule=infra_schedule, runner=runner,
                            retries=retries, retry_delay_seconds=retry_delay,
                            execution_timeout_seconds=execution_timeout, stores_per_task=stores_per_task,
                            parallel_stores=parallel_stores, deferrable=deferrable, pool=pool,
                            secret_env=tuple(secret_env), env=env, slack_webhook_env=slack, kubernetes=kubernetes)


def _job_env_names() -> set[str]:
    return {"DATASURFACE_MODEL", "DATASURFACE_MODEL_REF", "DATASURFACE_MODEL_PATH", "DATASURFACE_MERGE_HOST",
            "DATASURFACE_MERGE_PORT", "DATASURFACE_MERGE_DATABASE", "DATASURFACE_MERGE_CREDENTIAL"}


def _parse_kubernetes(k: _Reader) -> KubernetesSettings:
    pull_secrets = []
    for i, name in enumerate(k.items("imagePullSecrets")):
        if not isinstance(name, str) or not _K8S_NAME.fullmatch(name):
            k.fail(f"must be a Secret name (got {_kind(name)})", f"imagePullSecrets[{i}]")
        pull_secrets.append(name)
    resources = k.mapping("resources", values=dict)
    for part, amounts in resources.items():
        if part not in ("requests", "limits"):
            k.fail("unknown key (known keys: requests, limits)", f"resources.{part}")
        elif isinstance(amounts, dict):
            for res, amount in amounts.items():
                if isinstance(amount, bool) or not isinstance(amount, str | int | float):
                    k.fail(f"must be a quantity such as \"500m\" or \"1Gi\" (got {_kind(amount)})",
                           f"resources.{part}.{res}")
    mounts: list[SecretMount] = []
    for i, raw in enumerate(k.items("secretMounts")):
        m = k.child(f"secretMounts[{i}]", raw)
        mount = SecretMount(secret=m.string("secret", required=True, pattern=_K8S_NAME),
                            key=m.string("key", required=True), mount_path=m.string("mountPath", required=True),
                            path=m.string("path", required=True))
        m.done(("secret", "key", "mountPath", "path"))
        if isinstance(mount.mount_path, str) and (not mount.mount_path.startswith("/")
                                                   or mount.mount_path in ("/tmp", MODEL_MOUNT)):
            m.fail("must be an absolute folder other than /tmp and /model", "mountPath")
        if mount.mount_path in {x.mount_path for x in mounts}:
            m.fail(f"duplicate mountPath {mount.mount_path!r}", "mountPath")
        mounts.append(mount)
    tolerations = []
    for i, raw in enumerate(k.items("tolerations")):
        if not isinstance(raw, dict):
            k.fail(f"must be an object (got {_kind(raw)})", f"tolerations[{i}]")
        else:
            tolerations.append(raw)
    settings = KubernetesSettings(
        secret_mounts=tuple(mounts),
        node_selector=k.mapping("nodeSelector", values=str),
        tolerations=tuple(tolerations),
        affinity=k.mapping("affinity", values=dict),
        annotations=k.mapping("annotations", values=str),
        image=k.string("image", required=True),
        namespace=k.string("namespace", nullable=True, pattern=_K8S_NAME),
        image_pull_policy=k.string("imagePullPolicy", default="IfNotPresent", choices=_PULL_POLICIES),
        image_pull_secrets=tuple(pull_secrets),
        service_account_name=k.string("serviceAccountName", nullable=True, pattern=_K8S_NAME),
        resources={part: {r: str(a) for r, a in amounts.items()} for part, amounts in resources.items()
                   if isinstance(amounts, dict)},
        labels=k.mapping("labels", values=str),
        startup_timeout_seconds=k.integer("startupTimeoutSeconds", default=300, minimum=1),
        model_config_map=k.string("modelConfigMap", nullable=True, pattern=_K8S_NAME),
        security_context=k.mapping("securityContext"),
        container_security_context=k.mapping("containerSecurityContext"),
    )
    k.done(_K8S_KEYS)
    return settings


def load_settings(path: Path) -> PlatformSettings:
    """Read and validate platform.json; every error names the file."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise PlatformSettingsError(f"{path}: cannot read the platform settings: {exc.strerror}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise PlatformSettingsError(f"{path}: not valid JSON: {exc}") from None
    try:
        return parse_settings(data)
    except PlatformSettingsError as exc:
        raise PlatformSettingsError(f"{path}: {exc}") from None


# --- running the job ----------------------------------------------------------------------------------


class JobFailed(RuntimeError):
    """The job exited with a failure status (the task fails and is retried per settings)."""


class LocalJobOperator(BaseOperator):
    """Runs `datasurface-job ARGS` as a subprocess on the worker (the `"runner": "local"` setting).

    Env: the platform's DATASURFACE_* settings over the part of the worker's env a job needs
    (_INHERITED_ENV: never Airflow's own secrets) and the secretEnv names, which must already be in the
    worker's env (the chart sets them on the scheduler from the Secrets when a platform uses this runner).
    Exit 0: success; exit 10 with `run_again_on_10`: skipped (the DAG's retrigger task then runs); anything
    else: failure.

    The job runs in its own process group. Whenever `execute` ends before the job did (Airflow's
    `execution_timeout`, any exception) and when Airflow kills the task (`on_kill`), the group gets
    SIGTERM and, if still alive after STOP_GRACE_SECONDS, SIGKILL: no job is left running.
    """

    ui_color = "#e8f0fe"

    def __init__(self, *, job_args: Sequence[str], job_env: Mapping[str, str],
                 required_env: Sequence[str] = (), optional_env: Sequence[str] = (),
                 withheld_env: Sequence[str] = (), run_again_on_10: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.job_args = list(job_args)
        self.job_env = dict(job_env)
        self.required_env = list(required_env)
        self.optional_env = list(optional_env)
        self.withheld_env = list(withheld_env)
        self.run_again_on_10 = run_again_on_10
        self._proc: subprocess.Popen[str] | None = None

    def execute(self, context: Any) -> None:
        from airflow.sdk.exceptions import AirflowSkipException

        missing = [name for name in self.required_env if not os.environ.get(name)]
        if missing:
            raise JobFailed(f"local runner: env var(s) {', '.join(missing)} (secretEnv) not set on the "
                            f"worker")
        executable = shutil.which(JOB_COMMAND)
        if executable is None:
            raise JobFailed(f"local runner: {JOB_COMMAND} is not on the worker's PATH "
                            f"(install the datasurface package in the Airflow image)")
        env = {**self.inherited_env(), **self.job_env}
        self.log.info("Running %s %s", JOB_COMMAND, " ".join(self.job_args))
        proc = subprocess.Popen([executable, *self.job_args], env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, errors="replace", start_new_session=True)
        self._proc = proc
        assert proc.stdout is not None
        reason = ""
        try:
            for raw in proc.stdout:
                line = raw.rstrip("\n")
                self.log.info("%s", line)
                if line.startswith(f"{JOB_COMMAND}: "):  # the job's one-line reason for a failure
                    reason = line[len(JOB_COMMAND) + 2:]
            code = proc.wait()
        finally:  # e.g. AirflowTaskTimeout raised here by execution_timeout: the job must not outlive us
            self.stop_job()
            proc.stdout.close()
            self._proc = None
        if code == EXIT_OK:
            return
        if code == EXIT_RUN_AGAIN and self.run_again_on_10:
            raise AirflowSkipException(f"{JOB_COMMAND} exited {code}: it finished a batch left open by an "
                                       f"interrupted run; the DAG runs again at once")
        if code < 0:
            raise JobFailed(f"{JOB_COMMAND} {self.job_args[0]} was stopped by signal {-code}")
        raise JobFailed(f"{JOB_COMMAND} {self.job_args[0]} exited with status {code}"
                        + (f": {reason[:500]}" if reason else ""))

    def inherited_env(self) -> dict[str, str]:
        """The part of the worker's env the job gets (see _INHERITED_ENV)."""
        secrets = {*self.required_env, *self.optional_env}
        return {name: value for name, value in os.environ.items()
                if name not in self.withheld_env
                and (name in secrets or name in _INHERITED_ENV or name.startswith(_INHERITED_PREFIXES))
                and name not in _WITHHELD_PG}

    def stop_job(self) -> None:
        """Stop the running job, if any: SIGTERM to its process group, SIGKILL after STOP_GRACE_SECONDS."""
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return
        self.log.warning("Stopping %s (pid %d)", JOB_COMMAND, proc.pid)
        for sig in (signal.SIGTERM, signal.SIGKILL):  # waits are bounded: on_kill may run inside a wait
            try:
                os.killpg(proc.pid, sig)  # its own group (start_new_session): git and other children too
            except ProcessLookupError:
                return
            try:
                proc.wait(timeout=STOP_GRACE_SECONDS)
                return
            except subprocess.TimeoutExpired:
                if sig == signal.SIGTERM:
                    self.log.warning("%s still running %d s after SIGTERM: SIGKILL", JOB_COMMAND,
                                     STOP_GRACE_SECONDS)

    def on_kill(self) -> None:
        self.stop_job()


_K8S_CONFIGURATION: list[Any] = []  # the kubernetes client's Configuration the pod specs' models share


def _kubernetes_job(settings: PlatformSettings, *, task_id: str, name: str, args: list[str],
                    extra_labels: Mapping[str, str], run_again_on_10: bool, **kwargs: Any) -> BaseOperator:
    # Imported only for this runner: the kubernetes client is the slowest import of a parse.
    from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
    from kubernetes.client import Configuration
    from kubernetes.client import models as k8s

    # A model made without a configuration copies the default one, whose logging setup clears every
    # logger's cache: about two thirds of parsing a platform of 400 stores. One configuration serves them all.
    if not _K8S_CONFIGURATION:
        _K8S_CONFIGURATION.append(Configuration.get_default_copy())
    cfg = _K8S_CONFIGURATION[0]

    def m(model: Any, **fields: Any) -> Any:
        return model(local_vars_configuration=cfg, **fields)

    k = settings.kubernetes
    assert k is not None  # parse_settings requires it for this runner
    env = [m(k8s.V1EnvVar, name=n, value=v) for n, v in sorted(settings.job_env().items())]
    env.append(m(k8s.V1EnvVar, name="TMPDIR", value="/tmp"))
    env += [m(k8s.V1EnvVar, name=s.name, value_from=m(k8s.V1EnvVarSource, secret_key_ref=m(
                k8s.V1SecretKeySelector, name=s.secret, key=s.key, optional=s.optional)))
            for s in settings.secret_env]
    volumes = [m(k8s.V1Volume, name="tmp", empty_dir=m(k8s.V1EmptyDirVolumeSource))]
    mounts = [m(k8s.V1VolumeMount, name="tmp", mount_path="/tmp")]
    if k.model_config_map:
        volumes.append(m(k8s.V1Volume, name="model",
                         config_map=m(k8s.V1ConfigMapVolumeSource, name=k.model_config_map)))
        mounts.append(m(k8s.V1VolumeMount, name="model", mount_path=MODEL_MOUNT, read_only=True))
    for i, mount in enumerate(k.secret_mounts):
        volumes.append(m(k8s.V1Volume, name=f"secret-{i}", secret=m(
            k8s.V1SecretVolumeSource, secret_name=mount.secret,
            items=[m(k8s.V1KeyToPath, key=mount.key, path=mount.path)], default_mode=0o444)))
        mounts.append(m(k8s.V1VolumeMount, name=f"secret-{i}", mount_path=mount.mount_path, read_only=True))
    labels = {**k.labels, "datasurface.io/platform": settings.id_prefix, **extra_labels}
    return KubernetesPodOperator(
        task_id=task_id,
        name=name,
        namespace=k.namespace,
        image=k.image,
        image_pull_policy=k.image_pull_policy,
        image_pull_secrets=[m(k8s.V1LocalObjectReference, name=s) for s in k.image_pull_secrets] or None,
        service_account_name=k.service_account_name,
        automount_service_account_token=False,
        arguments=args,
        env_vars=env,
        container_resources=m(k8s.V1ResourceRequirements, requests=dict(k.resources.get("requests", {})) or None,
                              limits=dict(k.resources.get("limits", {})) or None),
        labels=labels,
        startup_timeout_seconds=k.startup_timeout_seconds,
        volumes=volumes,
        volume_mounts=mounts,
        security_context=dict(k.security_context) or None,
        container_security_context=dict(k.container_security_context) or None,
        # placement as Kubernetes writes it (camelCase dicts): the provider converts them to its models
        node_selector=dict(k.node_selector) or None,
        tolerations=[dict(t) for t in k.tolerations] or None,
        affinity=dict(k.affinity) or None,
        annotations=dict(k.annotations) or None,
        on_finish_action="delete_pod",
        do_xcom_push=False,
        get_logs=True,
        skip_on_exit_code=EXIT_RUN_AGAIN if run_again_on_10 else None,
        # deferred: the task process ends once its pod runs; the triggerer polls the pod (many at once)
        # and the task resumes only to read the exit status and delete the pod
        deferrable=settings.deferrable,
        **kwargs,
    )


def job_task(settings: PlatformSettings, *, task_id: str, args: list[str], store: str | None,
             run_again_on_10: bool, group: int | None = None, **kwargs: Any) -> BaseOperator:
    """The task running `datasurface-job ARGS` with the platform's runner, stopped after the platform's
    executionTimeoutSeconds (Airflow then calls on_kill: the pod is deleted, the subprocess stopped)."""
    kwargs.setdefault("execution_timeout", timedelta(seconds=settings.execution_timeout_seconds))
    if settings.pool:
        kwargs["pool"] = settings.pool
    if settings.runner == "local":
        return LocalJobOperator(task_id=task_id, job_args=args, job_env=settings.job_env(),
                                required_env=[s.name for s in settings.secret_env if not s.optional],
                                optional_env=[s.name for s in settings.secret_env if s.optional],
                                withheld_env=[settings.slack_webhook_env] if settings.slack_webhook_env else [],
                                run_again_on_10=run_again_on_10, **kwargs)
    what = store.lower() if store else f"group{group}" if group else "setup"
    extra = {"datasurface.io/store": store} if store else \
        {"datasurface.io/group": str(group)} if group else {"datasurface.io/task": "setup"}
    return _kubernetes_job(settings, task_id=task_id, name=f"ds-{settings.id_prefix}-{what}"[:200],
                           args=args, extra_labels=extra, run_again_on_10=run_again_on_10, **kwargs)


# --- failure notice -----------------------------------------------------------------------------------


def slack_notifier(settings: PlatformSettings, subject: str) -> Callable[[Any], None] | None:
    """The task's on_failure_callback: one Slack message per final failure, when a webhook is configured.

    The webhook URL is read from the env var named by `slackWebhookEnv` when the callback runs (on the
    worker); no env var, no message. Never raises: a notice must not change the task's outcome.
    """
    env_name = settings.slack_webhook_env
    if not env_name:
        return None

    def notify(context: Mapping[str, Any]) -> None:
        try:
            url = os.environ.get(env_name, "").strip()
            if not url:
                return
            if not url.startswith(("https://", "http://")):
                log.warning("Slack notice not sent: %s is not an http(s) URL", env_name)
                return
            ti = context.get("ti") or context.get("task_instance")
            log_url = getattr(ti, "log_url", None) or "(no log URL)"
            reason = str(context.get("exception") or "").strip().splitlines()
            text = (f":red_circle: DataSurface {subject} failed: platform {settings.platform}, "
                    f"{getattr(ti, 'dag_id', '?')}.{getattr(ti, 'task_id', '?')}, "
                    f"try {getattr(ti, 'try_number', '?')}"
                    f"{': ' + reason[0][:600] if reason else ''}\nLog: {log_url}")
            request = urllib.request.Request(url, data=json.dumps({"text": text}).encode(),
                                             headers={"Content-Type": "application/json"}, method="POST")
            with urllib.request.urlopen(request, timeout=SLACK_TIMEOUT_SECONDS) as response:
                response.read()
        except Exception as exc:  # the notice is best effort
            log.warning("Slack notice not sent: %s", type(exc).__name__)

    return notify


# --- the DAGs -----------------------------------------------------------------------------------------


def _default_args(settings: PlatformSettings, subject: str) -> dict[str, Any]:
    return {
        "owner": "datasurface",
        "retries": settings.retries,
        "retry_delay": timedelta(seconds=settings.retry_delay_seconds),
        "on_failure_callback": slack_notifier(settings, subject),
    }


def _tags(settings: PlatformSettings, kind: str) -> list[str]:
    return ["datasurface", f"platform:{settings.id_prefix}", settings.mode, kind]


def ingestion_dag(settings: PlatformSettings, store: str) -> DAG:
    return _ingestion_dag(settings, settings.ingestion_dag_id(store), f"store {store}",
                          lambda: job_task(settings, task_id="merge", args=settings.merge_args(store), store=store,
                                           run_again_on_10=True))


def group_dag(settings: PlatformSettings, k: int, stores: Sequence[str]) -> DAG:
    """Group k's DAG: one `merge` of its stores; its run time limit grows with the group (one
    executionTimeoutSeconds for each round of parallelStores stores)."""
    what = f"group {k} ({len(stores)} stores: {stores[0]} to {stores[-1]})" if len(stores) > 1 \
        else f"group {k} (store {stores[0]})"
    timeout = timedelta(seconds=settings.group_timeout_seconds(len(stores)))
    return _ingestion_dag(settings, settings.group_dag_id(k), what,
                          lambda: job_task(settings, task_id="merge", args=settings.group_merge_args(stores),
                                           store=None, group=k, run_again_on_10=True, execution_timeout=timeout))


def _ingestion_dag(settings: PlatformSettings, dag_id: str, what: str, merge_task: Callable[[], BaseOperator]) -> DAG:
    from airflow.providers.standard.operators.empty import EmptyOperator
    from airflow.providers.standard.operators.trigger_dagrun import TriggerDagRunOperator

    with DAG(
        dag_id=dag_id,
        description=f"Ingest {what} into platform {settings.platform} ({settings.mode})",
        schedule=settings.schedule,
        start_date=START_DATE,
        catchup=False,
        max_active_runs=1,
        is_paused_upon_creation=False,
        tags=_tags(settings, "ingestion"),
        default_args=_default_args(settings, f"ingestion of {what}"),
        doc_md=__doc__,
    ) as dag:
        merge = merge_task()
        # merge skipped == the job exited 10: queue a new run now (max_active_runs=1 starts it when this
        # one ends). On success or failure of merge this task is skipped.
        retrigger = TriggerDagRunOperator(task_id="retrigger", trigger_dag_id=dag_id,
                                          trigger_rule="all_skipped", wait_for_completion=False, retries=0)
        # A leaf that fails the DAG run (upstream_failed) when merge fails; skipped on 10, success on 0.
        done = EmptyOperator(task_id="done")
        merge >> [retrigger, done]
    _check_schedule(dag, "schedule")
    return dag


def infrastructure_dag(settings: PlatformSettings) -> DAG:
    with DAG(
        dag_id=settings.infrastructure_dag_id,
        description=f"Create or evolve the schema, tables and views of platform {settings.platform}",
        schedule=settings.infrastructure_schedule,
        start_date=START_DATE,
        catchup=False,
        max_active_runs=1,
        is_paused_upon_creation=False,
        tags=_tags(settings, "infrastructure"),
        default_args=_default_args(settings, "infrastructure setup"),
        doc_md=__doc__,
    ) as dag:
        job_task(settings, task_id="setup", args=settings.setup_args(), store=None, run_again_on_10=False)
    _check_schedule(dag, "infrastructureSchedule")
    return dag


def _check_schedule(dag: DAG, key: str) -> None:
    """A bad cron expression is a settings error naming the key, not a failure deep in Airflow."""
    try:
        dag.timetable.validate()
    except Exception as exc:
        raise PlatformSettingsError(f"{key}: not a valid Airflow schedule (cron expression or preset such "
                                    f"as @hourly): {exc}") from None


def build_dags(settings: PlatformSettings) -> dict[str, DAG]:
    """Every DAG of the platform, by DAG id."""
    if settings.stores_per_task == 1:
        dags = {settings.ingestion_dag_id(store): ingestion_dag(settings, store) for store in settings.stores}
    else:
        dags = {settings.group_dag_id(k): group_dag(settings, k, stores)
                for k, stores in enumerate(settings.groups, start=1)}
    dags[settings.infrastructure_dag_id] = infrastructure_dag(settings)
    return dags


def _define_dags(module_globals: dict[str, Any], settings_path: Path) -> dict[str, DAG]:
    settings = load_settings(settings_path)
    try:
        dags = build_dags(settings)
    except PlatformSettingsError as exc:
        raise PlatformSettingsError(f"{settings_path}: {exc}") from None
    module_globals.update(dags)
    return dags


# Imported by Airflow: define the platform's DAGs. Run as a script: check platform.json, list the DAG ids.
_DAGS = _define_dags(globals(), Path(__file__).with_name(SETTINGS_FILE))
if __name__ == "__main__":
    print("\n".join(_DAGS))
