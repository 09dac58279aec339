"""Parse and validate `datasurface.yaml` text into a `Model` (docs/model.md).

The file is data: it is read with PyYAML's safe loader only, and every rule of docs/model.md is checked
here, so the rest of the job can trust a `Model`. Every problem is reported with the file, the path
inside it (`stores[0].datasets[1].columns[3].type`), the problem and the line; all problems found are
listed, not just the first, in one line.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

import yaml

from datasurface.errors import ModelError
from datasurface.model import names, safeyaml
from datasurface.model.names import IDENTIFIER_MAX
from datasurface.model.schema import (
    CONSISTENCIES,
    INGESTIONS,
    SOURCE_TYPES,
    Column,
    Consistency,
    Dataset,
    Ingestion,
    Model,
    Source,
    SourceType,
    Store,
    Workspace,
    WorkspaceDataset,
)

API_VERSION = "datasurface/v1"
KIND = "Model"
DEFAULT_CONSISTENCY: Consistency = "multi_dataset"
DEFAULT_PORT = 5432
DEFAULT_PORTS: dict[SourceType, int] = {"postgres": DEFAULT_PORT, "mysql": 3306}
DEFAULT_SCHEMA = "public"

STORE_NAME_MAX = 40
DATASET_NAME_MAX = 40

# Columns the merge tables add to the model's columns (docs/concepts.md); a model column may not use them.
RESERVED_COLUMNS = frozenset({"ds_batch_id", "ds_batch_in", "ds_batch_out"})
MAX_PROBLEMS = 1000  # validation stops here: the message lists ten, and a hostile file cannot make millions
SHOWN_MAX = 80  # characters of a value quoted in a message

ACCEPTED_TYPES = (
    "smallint", "integer", "bigint", "numeric(p,s)", "numeric(p)", "numeric", "real", "double precision",
    "boolean", "varchar(n)", "char(n)", "text", "date", "timestamp", "timestamptz", "time", "uuid",
    "jsonb", "bytea", "json", "interval", "inet", "cidr", "macaddr", "<any of these>[]",
)
_PLAIN_TYPES = frozenset({
    "smallint", "integer", "bigint", "numeric", "real", "double precision", "boolean", "text", "date",
    "timestamp", "timestamptz", "time", "uuid", "jsonb", "bytea", "json", "interval", "inet", "cidr", "macaddr",
})
NUMERIC_MAX_PRECISION = 1000
LENGTH_MAX = 10485760  # PostgreSQL's limit for varchar(n) and char(n)

_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*")
# a DNS name or IPv4 address, or a bare IPv6 address (libpq's host= takes no brackets)
_HOSTNAME = re.compile(r"[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?|[0-9A-Fa-f.]*:[0-9A-Fa-f:.]*")
_CREDENTIAL = re.compile(r"[A-Za-z][A-Za-z0-9_.-]*")
_NUMERIC = re.compile(r"numeric\s*\(\s*(\d+)\s*(?:,\s*(\d+)\s*)?\)")
_LENGTH_TYPE = re.compile(r"(varchar|char)\s*\(\s*(\d+)\s*\)")

_ROOT_KEYS = ("apiVersion", "kind", "stores", "workspaces")
_ROOT_REQUIRED = ("apiVersion", "kind", "stores")
_WORKSPACE_KEYS = ("name", "platform", "role", "datasets")
_WORKSPACE_DATASET_KEYS = ("store", "dataset")
WORKSPACE_NAME_MAX = 40
PLATFORM_NAME_MAX = 63
_STORE_KEYS = ("name", "consistency", "source", "datasets")
_SOURCE_KEYS = ("type", "host", "port", "database", "schema", "credential", "ingestion", "publication")
_DATASET_KEYS = ("name", "table", "primaryKey", "columns")
_COLUMN_KEYS = ("name", "type", "nullable", "source")
SOURCE_NAME_MAX = 63  # bytes in UTF-8: PostgreSQL's limit (a longer name is cut there, never matched)

PathPart = str | int
Path = tuple[PathPart, ...]


def format_path(path: Sequence[PathPart]) -> str:
    """`("stores", 0, "name")` -> `stores[0].name`."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            key = part if len(part) <= SHOWN_MAX else f"{part[:SHOWN_MAX]}…"
            out += f".{key}" if out else key
    return out or "(top level)"


def shown(value: object) -> str:
    """`repr(value)`, cut to about SHOWN_MAX characters: a message quotes what the file says, briefly."""
    text = repr(value)
    return text if len(text) <= SHOWN_MAX else f"{text[:SHOWN_MAX]}… ({len(text)} characters)"


class Problem(NamedTuple):
    path: Path
    message: str
    line: int | None = None  # 1-based line in the file, when known

    def describe(self, origin: str) -> str:
        where = f" (line {self.line})" if self.line is not None else ""
        return f"{origin}: {format_path(self.path)}: {self.message}{where}"


class ModelValidationError(ModelError):
    """The model file parsed but breaks rules of docs/model.md; `problems` lists each of them."""

    MAX_LISTED = 10

    def __init__(self, origin: str, problems: Sequence[Problem]) -> None:
        self.origin = origin
        self.problems = tuple(problems)
        listed = [p.describe(origin) for p in self.problems[: self.MAX_LISTED]]
        more = len(self.problems) - len(listed)
        stopped = " (validation stopped there)" if len(self.problems) >= MAX_PROBLEMS else ""
        text = "; ".join(listed) + (f"; and {more} more problem(s){stopped}" if more > 0 else "")
        super().__init__(text)


# --- column types -----------------------------------------------------------------------------


class TypeProblem(ValueError):
    """A column type the model does not have (docs/model.md); the message says why."""


def normalise_type(text: str) -> str:
    """The canonical lower-case spelling of a model column type (docs/model.md), or TypeProblem.

    `NUMERIC( 10 , 2 )` -> `numeric(10,2)`, `numeric(5)` -> `numeric(5,0)`, `Double  Precision` ->
    `double precision`, `VARCHAR(20)` -> `varchar(20)`, `Numeric(12, 2) []` -> `numeric(12,2)[]` (arrays
    have one dimension: PostgreSQL does not enforce a declared number of them).
    """
    t = " ".join(text.split()).lower()
    array = re.fullmatch(r"(.*?)\s*\[\s*\]", t)
    if array:
        element = array.group(1)
        if element.endswith("]"):
            raise TypeProblem(f"arrays have one dimension, got {shown(text)}")
        return normalise_type(element) + "[]"
    if t in _PLAIN_TYPES:
        return t
    m = _NUMERIC.fullmatch(t)
    if m:
        precision = int(m.group(1))
        scale = int(m.group(2)) if m.group(2) is not None else 0
        if not 1 <= precision <= NUMERIC_MAX_PRECISION:
            raise TypeProblem(
                f"numeric precision must be 1..{NUMERIC_MAX_PRECISION}, got {precision} in {shown(text)}")
        if scale > precision:
            raise TypeProblem(f"numeric scale must be 0..precision ({precision}), got {scale} in {shown(text)}")
        return f"numeric({precision},{scale})"
    m = _LENGTH_TYPE.fullmatch(t)
    if m:
        length = int(m.group(2))
        if not 1 <= length <= LENGTH_MAX:
            raise TypeProblem(f"{m.group(1)} length must be 1..{LENGTH_MAX}, got {length} in {shown(text)}")
        return f"{m.group(1)}({length})"
    hint = ""
    if t in ("varchar", "char", "character varying", "character"):
        hint = ": give a length, e.g. varchar(100)"
    raise TypeProblem(f"unknown type {shown(text)} (accepted: {', '.join(ACCEPTED_TYPES)}){hint}")


# --- parsing ----------------------------------------------------------------------------------


def parse_model(text: str, origin: str) -> Model:
    """Parse and validate the text of a model file; `origin` names the file in every message.

    Raises ModelError (ModelValidationError for rule violations) naming the file, the path inside it,
    the problem and its line. The YAML is read within the bounds of `safeyaml` (size, depth, aliases).
    """
    root_node = safeyaml.compose(text, origin)
    validator = _Validator()
    model = None
    try:
        data = None
        if root_node is not None:
            _check_duplicate_keys(root_node, validator)  # before construction: `<<` merges are no duplicates
            data = safeyaml.construct(root_node, origin)
        model = validator.model(data, origin)
    except _TooManyProblems:
        pass
    if validator.problems:
        lines = _Lines(root_node)
        located = [Problem(p.path, p.message, lines.of(p.path) if p.line is None else p.line)
                   for p in validator.problems]
        raise ModelValidationError(origin, located)
    if model is None:  # cannot happen without a problem listed; never hand out a half model
        raise ModelValidationError(origin, [Problem((), "invalid model")])
    return model


def _check_duplicate_keys(root: yaml.Node, validator: _Validator) -> None:
    """PyYAML silently keeps the last of two equal keys; a model that says a thing twice is an error."""
    seen: set[int] = set()
    stack: list[tuple[yaml.Node, Path]] = [(root, ())]
    while stack:
        node, path = stack.pop()
        if id(node) in seen:  # aliases share nodes: visit each once (also guards against cycles)
            continue
        seen.add(id(node))
        if isinstance(node, yaml.MappingNode):
            keys: dict[str, int] = {}
            for key_node, value_node in node.value:
                key = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
                if key is None:
                    continue
                if key in keys:
                    validator.add((*path, key), f"duplicate key (first given at line {keys[key]})",
                                  key_node.start_mark.line + 1)
                else:
                    keys[key] = key_node.start_mark.line + 1
                stack.append((value_node, (*path, key)))
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                stack.append((item, (*path, i)))


class _Lines:
    """The line of a path in the node graph: of its last key when it ends in a mapping key, else of its
    node; of the nearest enclosing node when the path does not exist (a missing key). Each mapping's
    keys are indexed once, so locating many problems stays linear."""

    def __init__(self, root: yaml.Node | None) -> None:
        self._root = root
        self._keys: dict[int, dict[str, tuple[yaml.Node, yaml.Node]]] = {}

    def _pairs(self, node: yaml.MappingNode) -> dict[str, tuple[yaml.Node, yaml.Node]]:
        pairs = self._keys.get(id(node))
        if pairs is None:  # the last of equal keys, as the constructor keeps it
            pairs = {k.value: (k, v) for k, v in node.value if isinstance(k, yaml.ScalarNode)}
            self._keys[id(node)] = pairs
        return pairs

    def of(self, path: Path) -> int | None:
        if self._root is None:
            return None
        node: yaml.Node = self._root
        for n, part in enumerate(path):
            if isinstance(part, int) and isinstance(node, yaml.SequenceNode) and 0 <= part < len(node.value):
                node = node.value[part]
                continue
            if isinstance(part, str) and isinstance(node, yaml.MappingNode) and part in self._pairs(node):
                key, value = self._pairs(node)[part]
                node = key if n == len(path) - 1 else value
                continue
            break
        return int(node.start_mark.line) + 1


# --- the rules ----------------------------------------------------------------------------------


def _kind_of(value: object) -> str:
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return f"a boolean ({value!r})"
    if isinstance(value, (int, float)):
        return f"a number ({shown(value)})"
    if isinstance(value, str):
        return f"a string ({shown(value)})"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return f"a {type(value).__name__} ({shown(value)})"


class _TooManyProblems(Exception):
    """MAX_PROBLEMS were found: the validator stops."""


class _Validator:
    def __init__(self) -> None:
        self.problems: list[Problem] = []

    def add(self, path: Path, message: str, line: int | None = None) -> None:
        self.problems.append(Problem(path, message, line))
        if len(self.problems) >= MAX_PROBLEMS:
            raise _TooManyProblems

    # generic shapes

    def mapping(self, value: object, path: Path, allowed: Sequence[str], required: Iterable[str]
                ) -> dict[str, Any] | None:
        if not isinstance(value, dict):
            self.add(path, f"expected a mapping (keys: {', '.join(allowed)}), got {_kind_of(value)}")
            return None
        for key in value:
            if key not in allowed:
                import difflib  # only for a misspelt key: not imported by every run

                hint = difflib.get_close_matches(str(key), allowed, n=1)
                suggestion = f"did you mean {hint[0]!r}? " if hint else ""
                self.add((*path, str(key)), f"unknown key ({suggestion}allowed: {', '.join(allowed)})")
        for key in required:
            if key not in value:
                self.add((*path, key), "required key is missing")
        return value

    def list_of(self, value: object, path: Path, what: str) -> list[Any] | None:
        if not isinstance(value, list):
            self.add(path, f"expected a list of {what}, got {_kind_of(value)}")
            return None
        if not value:
            self.add(path, f"the list is empty (at least one {what.rstrip('s')} is required)")
            return None
        return value

    def string(self, value: object, path: Path) -> str | None:
        if not isinstance(value, str):
            self.add(path, f"expected a string, got {_kind_of(value)}")
            return None
        if not value.strip():
            self.add(path, "must not be empty")
            return None
        return value

    def name(self, value: object, path: Path, max_len: int) -> str | None:
        text = self.string(value, path)
        if text is None:
            return None
        if not _NAME.fullmatch(text):
            self.add(path, f"{shown(text)} is not a plain identifier: use letters, digits and _, "
                     "starting with a letter")
            return None
        if len(text) > max_len:
            self.add(path, f"{shown(text)} is {len(text)} characters long (at most {max_len} allowed)")
            return None
        return text

    # the model

    def model(self, data: object, origin: str) -> Model | None:
        if data is None:
            self.add((), f"the file is empty (expected a mapping with keys: {', '.join(_ROOT_KEYS)})")
            return None
        root = self.mapping(data, (), _ROOT_KEYS, _ROOT_REQUIRED)
        if root is None:
            return None
        if "apiVersion" in root and root["apiVersion"] != API_VERSION:
            self.add(("apiVersion",), f"expected {API_VERSION!r}, got {_kind_of(root['apiVersion'])}")
        if "kind" in root and root["kind"] != KIND:
            self.add(("kind",), f"expected {KIND!r}, got {_kind_of(root['kind'])}")
        stores: list[Store] = []
        items = self.list_of(root.get("stores"), ("stores",), "stores") if "stores" in root else None
        first_seen: dict[str, Path] = {}
        for i, item in enumerate(items or ()):
            store = self.store(item, ("stores", i))
            if store is None:
                continue
            key = store.name.lower()
            if key in first_seen:
                self.add(("stores", i, "name"), f"duplicate store name {store.name!r} (same as "
                         f"{format_path(first_seen[key])}, names are compared case-insensitively)")
                continue
            first_seen[key] = ("stores", i, "name")
            stores.append(store)
        if self.problems:
            return None
        self.merge_names(stores)
        workspaces = self.workspaces(root["workspaces"], stores) if "workspaces" in root else []
        if self.problems:
            return None
        return Model(stores=tuple(stores), origin=origin, workspaces=tuple(workspaces))

    def workspaces(self, value: object, stores: list[Store]) -> list[Workspace]:
        """Workspaces (docs/consumers.md). Which platform ingests which store is the chart's (the platforms'
        `stores`), not the model's: `setup --platform P` checks that P's workspaces list only stores given to it."""
        result: list[Workspace] = []
        items = self.list_of(value, ("workspaces",), "workspaces")
        first_seen: dict[str, Path] = {}
        for i, item in enumerate(items or ()):
            path: Path = ("workspaces", i)
            workspace = self.workspace(item, path, stores)
            if workspace is None:
                continue
            key = workspace.name.lower()
            if key in first_seen:
                self.add((*path, "name"), f"duplicate workspace name {workspace.name!r} (same as "
                         f"{format_path(first_seen[key])}, names are compared case-insensitively)")
                continue
            first_seen[key] = (*path, "name")
            result.append(workspace)
        return result

    def workspace(self, value: object, path: Path, stores: list[Store]) -> Workspace | None:
        data = self.mapping(value, path, _WORKSPACE_KEYS, _WORKSPACE_KEYS)
        if data is None:
            return None
        name = self.name(data["name"], (*path, "name"), WORKSPACE_NAME_MAX) if "name" in data else None
        platform = self.name(data["platform"], (*path, "platform"), PLATFORM_NAME_MAX) if "platform" in data else None
        role = self.string(data["role"], (*path, "role")) if "role" in data else None
        if role is not None and (len(role) > IDENTIFIER_MAX or "\x00" in role):
            self.add((*path, "role"), f"{role!r} is not a valid role name (at most {IDENTIFIER_MAX} characters)")
            role = None
        by_name = {s.name.lower(): s for s in stores}
        listed: list[WorkspaceDataset] = []
        seen: dict[tuple[str, str], Path] = {}
        items = self.list_of(data["datasets"], (*path, "datasets"), "datasets") if "datasets" in data else None
        for j, item in enumerate(items or ()):
            dpath = (*path, "datasets", j)
            entry = self.mapping(item, dpath, _WORKSPACE_DATASET_KEYS, _WORKSPACE_DATASET_KEYS)
            if entry is None or "store" not in entry or "dataset" not in entry:
                continue
            store_name = self.string(entry["store"], (*dpath, "store"))
            dataset_name = self.string(entry["dataset"], (*dpath, "dataset"))
            if store_name is None or dataset_name is None:
                continue
            store = by_name.get(store_name.lower())
            if store is None:
                known = ", ".join(s.name for s in stores)
                self.add((*dpath, "store"), f"no store named {store_name!r} in this model (stores: {known})")
                continue
            dataset = next((d for d in store.datasets if d.name.lower() == dataset_name.lower()), None)
            if dataset is None:
                known = ", ".join(d.name for d in store.datasets)
                self.add((*dpath, "dataset"), f"store {store.name!r} has no dataset named {dataset_name!r} "
                         f"(datasets: {known})")
                continue
            key = (store.name, dataset.name)
            if key in seen:
                self.add(dpath, f"dataset {store.name}.{dataset.name} is listed twice (same as "
                         f"{format_path(seen[key])})")
                continue
            seen[key] = dpath
            listed.append(WorkspaceDataset(store.name, dataset.name))  # the model's own spelling
        if name is None or platform is None or role is None or items is None or len(listed) != len(items):
            return None
        return Workspace(name=name, platform=platform, role=role, datasets=tuple(listed))

    def store(self, value: object, path: Path) -> Store | None:
        data = self.mapping(value, path, _STORE_KEYS, ("name", "source", "datasets"))
        if data is None:
            return None
        name = self.name(data.get("name"), (*path, "name"), STORE_NAME_MAX) if "name" in data else None
        if name is not None and names.is_reserved(name):
            self.add((*path, "name"), f"{name!r} is reserved: store names `ds` and `ds_…` (in any case) would "
                     f"give merge tables named like the job's own objects (ds_batches, ds_stage_…); rename "
                     "the store")
            name = None
        consistency = DEFAULT_CONSISTENCY
        if "consistency" in data:
            given = data["consistency"]
            if given not in CONSISTENCIES:
                self.add((*path, "consistency"), f"expected {' or '.join(CONSISTENCIES)}, got {_kind_of(given)}")
            else:
                consistency = given
        source = self.source(data["source"], (*path, "source")) if "source" in data else None
        datasets: list[Dataset] = []
        first_seen: dict[str, Path] = {}
        items = None
        if "datasets" in data:
            items = self.list_of(data["datasets"], (*path, "datasets"), "datasets")
        for j, item in enumerate(items or ()):
            dpath = (*path, "datasets", j)
            dataset = self.dataset(item, dpath)
            if dataset is None:
                continue
            key = dataset.name.lower()
            if key in first_seen:
                self.add((*dpath, "name"), f"duplicate dataset name {dataset.name!r} in this store (same as "
                         f"{format_path(first_seen[key])}, names are compared case-insensitively)")
                continue
            first_seen[key] = (*dpath, "name")
            datasets.append(dataset)
        if source is not None and source.ingestion == "cdc" and consistency != "multi_dataset":
            self.add((*path, "consistency"), "`ingestion: cdc` needs consistency: multi_dataset (one replication "
                     "slot carries all of a store's tables, committed together)")
            return None
        if name is None or source is None or items is None or len(datasets) != len(items):
            return None
        if source.ingestion == "cdc" and not source.publication:
            source = source._replace(publication=f"ds_{name.lower()}")
        return Store(name=name, consistency=consistency, source=source, datasets=tuple(datasets))

    def source(self, value: object, path: Path) -> Source | None:
        data = self.mapping(value, path, _SOURCE_KEYS, ("host", "database", "credential"))
        if data is None:
            return None
        ok = True
        kind: SourceType = "postgres"
        if "type" in data:
            if data["type"] not in SOURCE_TYPES:
                self.add((*path, "type"), f"expected {' or '.join(SOURCE_TYPES)}, got {_kind_of(data['type'])}")
                ok = False
            else:
                kind = data["type"]
        host = self.string(data["host"], (*path, "host")) if "host" in data else None
        if host is not None and not (host.startswith("/") or _HOSTNAME.fullmatch(host)):
            socket = "socket file" if kind == "mysql" else "socket directory"
            self.add((*path, "host"), f"{shown(host)} is neither a hostname nor a Unix-{socket} (starting with /)")
            host = None
        port = DEFAULT_PORTS[kind]
        if "port" in data:
            p = data["port"]
            if isinstance(p, bool) or not isinstance(p, int) or not 1 <= p <= 65535:
                self.add((*path, "port"), f"expected a port number 1..65535, got {_kind_of(p)}")
                ok = False
            else:
                port = p
        database = self.string(data["database"], (*path, "database")) if "database" in data else None
        if database is not None and (len(database) > IDENTIFIER_MAX or "\x00" in database):
            self.add((*path, "database"), f"{shown(database)} is not a valid database name "
                     f"(at most {IDENTIFIER_MAX} characters)")
            database = None
        schema = DEFAULT_SCHEMA
        if "schema" in data and kind == "mysql":
            self.add((*path, "schema"), "a mysql source has no schema: its `database` is the schema")
            ok = False
        elif "schema" in data:
            s = self.name(data["schema"], (*path, "schema"), IDENTIFIER_MAX)
            if s is None:
                ok = False
            else:
                schema = s
        credential = self.string(data["credential"], (*path, "credential")) if "credential" in data else None
        if credential is not None and not _CREDENTIAL.fullmatch(credential):
            self.add((*path, "credential"), f"{shown(credential)} is not a credential name: use letters, digits, "
                     "_ - and ., starting with a letter (it names env X_USER and X_PASSWORD)")
            credential = None
        ingestion: Ingestion = "snapshot"
        if "ingestion" in data:
            if data["ingestion"] not in INGESTIONS:
                self.add((*path, "ingestion"), f"expected {' or '.join(INGESTIONS)}, got {_kind_of(data['ingestion'])}")
                ok = False
            elif data["ingestion"] == "cdc" and kind != "postgres":
                self.add((*path, "ingestion"), f"`ingestion: cdc` reads PostgreSQL logical replication; a {kind} "
                         "source is read as snapshots (remove `ingestion`)")
                ok = False
            else:
                ingestion = data["ingestion"]
        publication = ""
        if "publication" in data:
            if ingestion != "cdc":
                self.add((*path, "publication"), "`publication` is only for `ingestion: cdc`")
                ok = False
            else:
                pub = self.name(data["publication"], (*path, "publication"), IDENTIFIER_MAX)
                ok = ok and pub is not None
                publication = pub or ""
        if not ok or host is None or database is None or credential is None:
            return None
        return Source(host=host, port=port, database=database, schema=schema, credential=credential, type=kind,
                      ingestion=ingestion, publication=publication)

    def dataset(self, value: object, path: Path) -> Dataset | None:
        data = self.mapping(value, path, _DATASET_KEYS, ("name", "primaryKey", "columns"))
        if data is None:
            return None
        name = self.name(data["name"], (*path, "name"), DATASET_NAME_MAX) if "name" in data else None
        table = name
        table_ok = True
        if "table" in data:
            table = self.source_name(data["table"], (*path, "table"))
            table_ok = table is not None
        columns: list[Column] = []
        by_name: dict[str, int] = {}  # lower-case name -> index in `columns`
        explicit_null: dict[int, bool] = {}  # index in `columns` -> the column said `nullable: true`
        col_paths: list[Path] = []
        items = self.list_of(data["columns"], (*path, "columns"), "columns") if "columns" in data else None
        columns_ok = items is not None
        declared = None if items is None else {
            item["name"].lower() for item in items if isinstance(item, dict) and isinstance(item.get("name"), str)}
        for k, item in enumerate(items or ()):
            cpath = (*path, "columns", k)
            parsed = self.column(item, cpath)
            if parsed is None:
                columns_ok = False
                continue
            column, said_nullable = parsed
            key = column.name.lower()
            if key in by_name:
                self.add((*cpath, "name"), f"duplicate column name {column.name!r} (same as "
                         f"{format_path((*col_paths[by_name[key]], 'name'))}, names are compared "
                         "case-insensitively)")
                columns_ok = False
                continue
            by_name[key] = len(columns)
            explicit_null[len(columns)] = said_nullable
            col_paths.append(cpath)
            columns.append(column)
        key_names = self.primary_key(data, path, columns, by_name, col_paths, explicit_null, declared)
        if name is None or not table_ok or table is None or not columns_ok or key_names is None:
            return None
        pk = set(key_names)
        columns = [c._replace(nullable=False) if c.name in pk else c for c in columns]
        return Dataset(name=name, table=table, primary_key=tuple(key_names), columns=tuple(columns))

    def primary_key(self, data: dict[str, Any], path: Path, columns: list[Column], by_name: dict[str, int],
                    col_paths: list[Path], explicit_null: dict[int, bool], declared: set[str] | None
                    ) -> list[str] | None:
        if "primaryKey" not in data:
            return None
        kpath = (*path, "primaryKey")
        items = self.list_of(data["primaryKey"], kpath, "column names")
        if items is None:
            return None
        names: list[str] = []
        seen: set[str] = set()
        ok = True
        for i, item in enumerate(items):
            text = self.string(item, (*kpath, i))
            if text is None:
                ok = False
                continue
            key = text.lower()
            if key in seen:
                self.add((*kpath, i), f"{shown(text)} is named twice in the primary key")
                ok = False
                continue
            seen.add(key)
            if key not in by_name:
                ok = False
                if declared is None or key in declared:
                    continue  # the column (or the column list) is there but invalid: reported already
                known = ", ".join(c.name for c in columns[:10]) + (", …" if len(columns) > 10 else "")
                self.add((*kpath, i), f"no column named {shown(text)} in this dataset "
                         f"(columns: {known or 'none valid'})")
                continue
            index = by_name[key]
            if explicit_null[index]:
                self.add((*col_paths[index], "nullable"),
                         f"column {columns[index].name!r} is in the primary key, which is never nullable")
                ok = False
            names.append(columns[index].name)  # the column's own spelling
        return names if ok else None

    def column(self, value: object, path: Path) -> tuple[Column, bool] | None:
        data = self.mapping(value, path, _COLUMN_KEYS, ("name", "type"))
        if data is None:
            return None
        name = self.name(data["name"], (*path, "name"), IDENTIFIER_MAX) if "name" in data else None
        if name is not None and name.lower() in RESERVED_COLUMNS:
            self.add((*path, "name"), f"{name!r} is reserved for the merge tables' own columns "
                     f"({', '.join(sorted(RESERVED_COLUMNS))})")
            name = None
        type_ = None
        if "type" in data:
            text = self.string(data["type"], (*path, "type"))
            if text is not None:
                try:
                    type_ = normalise_type(text)
                except TypeProblem as exc:
                    self.add((*path, "type"), str(exc))
        nullable = True
        nullable_ok = True
        if "nullable" in data:
            n = data["nullable"]
            if not isinstance(n, bool):
                self.add((*path, "nullable"), f"expected true or false, got {_kind_of(n)}")
                nullable_ok = False
            else:
                nullable = n
        source = self.source_name(data["source"], (*path, "source")) if "source" in data else None
        if name is None or type_ is None or not nullable_ok or ("source" in data and source is None):
            return None
        return (Column(name=name, type=type_, nullable=nullable, source=source),
                "nullable" in data and nullable)

    def source_name(self, value: object, path: Path) -> str | None:
        """A name in the source database, matched exactly (case, spaces, any characters but NUL)."""
        text = self.string(value, path)
        if text is None:
            return None
        if not text or "\x00" in text:
            self.add(path, "expected a non-empty name without NUL characters")
            return None
        if len(text.encode()) > SOURCE_NAME_MAX:
            self.add(path, f"{shown(text)} is {len(text.encode())} bytes long in UTF-8 (at most {SOURCE_NAME_MAX} "
                     "allowed)")
            return None
        return text

    def merge_names(self, stores: list[Store]) -> None:
        """Dataset D of store S owns `<s>_<d>` and its suffixed names in the merge schema (`names`): no
        name may be owned twice, compared as PostgreSQL stores them (lower case, cut at 63 bytes). A name
        too long for PostgreSQL is the engine's to refuse, for the store it merges (the model allows
        40 + 40 characters).

        Called only on a model without other problems, so list indexes are the file's."""
        owner: dict[str, tuple[str, Path, Store, Dataset]] = {}
        for i, store in enumerate(stores):
            for j, dataset in enumerate(store.datasets):
                path: Path = ("stores", i, "datasets", j)
                owned = names.dataset_names(store.name, dataset.name).owned()
                clash = next((n for n in owned if n in owner), None)
                if clash is not None:
                    what, other, other_store, other_dataset = owner[clash]
                    self.add((*path, "name"), f"its {owned[clash]} {clash!r} is also the {what} of "
                             f"{format_path(other)} (store {other_store.name!r}, dataset "
                             f"{other_dataset.name!r}): merge names are <store>_<dataset> in lower case; "
                             "rename a store or a dataset")
                    continue
                for n, what in owned.items():
                    owner[n] = (what, path, store, dataset)
