"""parse_model: every rule of docs/model.md, each failure naming the file, the exact path and the problem."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import yaml

from datasurface.errors import ModelError
from datasurface.model import parse_model
from datasurface.model.validate import ACCEPTED_TYPES, ModelValidationError, normalise_type

FILE = "datasurface.yaml"


def valid() -> dict[str, Any]:
    return {
        "apiVersion": "datasurface/v1",
        "kind": "Model",
        "stores": [{
            "name": "Store1",
            "consistency": "multi_dataset",
            "source": {"host": "pg-data", "port": 5432, "database": "customer_db", "schema": "public",
                       "credential": "source"},
            "datasets": [
                {"name": "customers", "table": "customers", "primaryKey": ["id"], "columns": [
                    {"name": "id", "type": "varchar(20)", "nullable": False},
                    {"name": "firstname", "type": "varchar(100)"},
                    {"name": "dob", "type": "date"},
                ]},
                {"name": "addresses", "primaryKey": ["id"], "columns": [
                    {"name": "id", "type": "varchar(20)"},
                    {"name": "customerid", "type": "varchar(20)"},
                ]},
            ],
        }],
    }


def parse(doc: object) -> Any:
    return parse_model(yaml.safe_dump(doc, sort_keys=False), FILE)


def problem(doc: object) -> str:
    with pytest.raises(ModelError) as info:
        parse(doc)
    message = str(info.value)
    assert "\n" not in message and "Traceback" not in message
    return message


def with_change(path: str, value: object, *, delete: bool = False) -> dict[str, Any]:
    """A valid model with the value at a dotted path (`stores.0.source.port`) replaced or deleted."""
    doc = valid()
    parts = [int(p) if p.isdigit() else p for p in path.split(".")]
    target: Any = doc
    for p in parts[:-1]:
        target = target[p]
    if delete:
        del target[parts[-1]]
    else:
        target[parts[-1]] = value
    return doc


# --- valid models ------------------------------------------------------------------------------------


def test_example_model_is_valid(repo_root):  # type: ignore[no-untyped-def]
    text = (repo_root / "examples/model/datasurface.yaml").read_text()
    model = parse_model(text, "examples/model/datasurface.yaml")
    store = model.store("Store1")
    assert [d.name for d in store.datasets] == ["customers", "addresses"]
    assert model.origin == "examples/model/datasurface.yaml"


def test_defaults_and_normalisation() -> None:
    doc = valid()
    store = doc["stores"][0]
    del store["consistency"], store["source"]["port"], store["source"]["schema"]
    model = parse(doc)
    s = model.store("Store1")
    assert s.consistency == "multi_dataset"
    assert (s.source.port, s.source.schema, s.source.host) == (5432, "public", "pg-data")
    addresses = s.dataset("addresses")
    assert addresses.table == "addresses"  # defaults to the name
    assert addresses.column("id").nullable is False  # a key column is never nullable
    assert addresses.column("customerid").nullable is True  # default
    assert addresses.primary_key == ("id",)


@pytest.mark.parametrize("said", [False, True])
def test_nullable_of_a_non_key_column_is_kept(said: bool) -> None:
    """The engine makes `nullable: false` NOT NULL in the merge table and refuses NULLs in the snapshot."""
    dataset = parse(with_change("stores.0.datasets.1.columns.1.nullable", said)).stores[0].datasets[1]
    [column] = [c for c in dataset.non_key_columns if c.name == "customerid"]
    assert column.nullable is said


@pytest.mark.parametrize("host", ["pg-data", "pg.svc.cluster.local", "10.0.0.7", "::1", "fe80::1", "/tmp/sock dir"])
def test_hosts(host: str) -> None:
    assert parse(with_change("stores.0.source.host", host)).stores[0].source.host == host


def test_single_dataset_socket_dir_and_other_settings() -> None:
    doc = valid()
    doc["stores"][0]["consistency"] = "single_dataset"
    doc["stores"][0]["source"].update(host="/var/run/postgresql", port=65535, schema="sales_2",
                                      credential="source-db.ro")
    doc["stores"][0]["datasets"][0]["table"] = "Customer_Table"
    s = parse(doc).store("Store1")
    assert s.consistency == "single_dataset"
    assert (s.source.host, s.source.port, s.source.schema) == ("/var/run/postgresql", 65535, "sales_2")
    assert s.source.credential == "source-db.ro"
    assert s.dataset("customers").table == "Customer_Table"


EVERY_TYPE = {
    "smallint": "smallint", "INTEGER": "integer", "BigInt": "bigint", "numeric(10,2)": "numeric(10,2)",
    "NUMERIC( 10 , 2 )": "numeric(10,2)", "numeric(5)": "numeric(5,0)", "numeric (1000, 1000)":
    "numeric(1000,1000)", "numeric": "numeric", "real": "real", "Double  Precision": "double precision",
    "double\tprecision": "double precision", "boolean": "boolean", "varchar(20)": "varchar(20)",
    "VARCHAR ( 020 )": "varchar(20)", "char(1)": "char(1)", "text": "text", "date": "date",
    "timestamp": "timestamp", "TIMESTAMPTZ": "timestamptz", "time": "time", "uuid": "uuid", "jsonb": "jsonb",
    "bytea": "bytea", " text ": "text", "JSON": "json", "interval": "interval", "inet": "inet", "cidr": "cidr",
    "macaddr": "macaddr", "text[]": "text[]", "Integer [ ]": "integer[]", "numeric(12, 2)[]": "numeric(12,2)[]",
    "varchar(5)[]": "varchar(5)[]", "double precision[]": "double precision[]", "jsonb[]": "jsonb[]",
}


def test_valid_model_with_every_type() -> None:
    doc = valid()
    columns = [{"name": "k", "type": "bigint"}]
    columns += [{"name": f"c{i}", "type": t} for i, t in enumerate(EVERY_TYPE)]
    doc["stores"][0]["datasets"][0]["columns"] = columns
    doc["stores"][0]["datasets"][0]["primaryKey"] = ["k", "c1"]
    dataset = parse(doc).store("Store1").dataset("customers")
    assert [c.type for c in dataset.columns[1:]] == list(EVERY_TYPE.values())
    assert dataset.primary_key == ("k", "c1")
    assert [c.name for c in dataset.non_key_columns][:2] == ["c0", "c2"]
    canonical = {"<any of these>[]" if t.endswith("[]") else t.split("(")[0] for t in EVERY_TYPE.values()}
    assert canonical == {a.split("(")[0] for a in ACCEPTED_TYPES}  # every accepted type is covered


@pytest.mark.parametrize("text", ["int", "varchar", "float", "timestamp with time zone", "varchar2(10)",
                                  "character varying(10)", "numeric(0)", "numeric(1001,0)", "numeric(3,4)",
                                  "numeric(-1,0)", "varchar(0)", "char(0)", "numeric(10,)", "text[][]", "int[]",
                                  "text[3]", "[]", "varchar[]",
                                  "double", "serial", "int4", "varchar(10485761)", "numeric(10,2)x"])
def test_unknown_or_out_of_range_types(text: str) -> None:
    message = problem(with_change("stores.0.datasets.0.columns.1.type", text))
    assert message.startswith(f"{FILE}: stores[0].datasets[0].columns[1].type: ")


def test_unknown_type_lists_the_accepted_types() -> None:
    message = problem(with_change("stores.0.datasets.1.columns.1.type", "varchar2(10)"))
    assert (f"{FILE}: stores[0].datasets[1].columns[1].type: unknown type 'varchar2(10)' (accepted: smallint, "
            "integer, bigint, numeric(p,s)") in message
    assert "jsonb, bytea, json, interval, inet, cidr, macaddr, <any of these>[])" in message
    assert "give a length" in problem(with_change("stores.0.datasets.1.columns.1.type", "varchar"))


def test_normalise_type_is_idempotent() -> None:
    for spelled, canonical in EVERY_TYPE.items():
        assert normalise_type(spelled) == canonical
        assert normalise_type(canonical) == canonical


# --- one failing rule at a time: (change, exact path, words of the problem) ---------------------------

LONG = "a" * 41
CASES: list[tuple[str, object, str, str]] = [
    # top level
    ("apiVersion", "datasurface/v2", "apiVersion", "expected 'datasurface/v1'"),
    ("kind", "Store", "kind", "expected 'Model'"),
    ("stores", [], "stores", "list is empty"),
    ("stores", "Store1", "stores", "expected a list of stores, got a string"),
    ("stores", {"name": "x"}, "stores", "expected a list of stores, got a mapping"),
    ("extra", 1, "extra", "unknown key"),
    ("stores.0", "Store1", "stores[0]", "expected a mapping"),
    # store
    ("stores.0.name", "1store", "stores[0].name", "not a plain identifier"),
    ("stores.0.name", "store-1", "stores[0].name", "not a plain identifier"),
    ("stores.0.name", "Störe", "stores[0].name", "not a plain identifier"),
    ("stores.0.name", "_store", "stores[0].name", "not a plain identifier"),
    ("stores.0.name", "store\n", "stores[0].name", "not a plain identifier"),
    ("stores.0.name", LONG, "stores[0].name", "41 characters long (at most 40"),
    ("stores.0.name", 12, "stores[0].name", "expected a string, got a number"),
    ("stores.0.name", "", "stores[0].name", "must not be empty"),
    ("stores.0.consistency", "multi", "stores[0].consistency", "expected multi_dataset or single_dataset"),
    ("stores.0.datasets", [], "stores[0].datasets", "list is empty"),
    ("stores.0.datasets", "customers", "stores[0].datasets", "expected a list of datasets"),
    ("stores.0.owner", "me", "stores[0].owner", "unknown key"),
    # source
    ("stores.0.source", ["pg"], "stores[0].source", "expected a mapping"),
    ("stores.0.source.port", "5432", "stores[0].source.port", "expected a port number 1..65535, got a string"),
    ("stores.0.source.port", 0, "stores[0].source.port", "expected a port number"),
    ("stores.0.source.port", 65536, "stores[0].source.port", "expected a port number"),
    ("stores.0.source.port", True, "stores[0].source.port", "got a boolean"),
    ("stores.0.source.port", 5432.5, "stores[0].source.port", "expected a port number"),
    ("stores.0.source.host", "pg data", "stores[0].source.host", "neither a hostname nor a Unix-socket"),
    ("stores.0.source.host", "run/postgresql", "stores[0].source.host", "neither a hostname"),
    ("stores.0.source.host", 5, "stores[0].source.host", "expected a string"),
    ("stores.0.source.host", "[::1]", "stores[0].source.host", "neither a hostname"),
    ("stores.0.source.host", "pg_data:5432", "stores[0].source.host", "neither a hostname"),
    ("stores.0.source.host", "-pg", "stores[0].source.host", "neither a hostname"),
    ("stores.0.source.database", "", "stores[0].source.database", "must not be empty"),
    ("stores.0.source.database", ["db"], "stores[0].source.database", "expected a string, got a list"),
    ("stores.0.source.schema", "my-schema", "stores[0].source.schema", "not a plain identifier"),
    ("stores.0.source.schema", "s" * 64, "stores[0].source.schema", "(at most 63"),
    ("stores.0.source.credential", "", "stores[0].source.credential", "must not be empty"),
    ("stores.0.source.credential", None, "stores[0].source.credential", "got nothing (null)"),
    ("stores.0.source.credential", "my cred", "stores[0].source.credential", "not a credential name"),
    ("stores.0.source.password", "x", "stores[0].source.password", "unknown key"),
    # dataset
    ("stores.0.datasets.1.name", "2addresses", "stores[0].datasets[1].name", "not a plain identifier"),
    ("stores.0.datasets.1.name", LONG, "stores[0].datasets[1].name", "41 characters long"),
    ("stores.0.datasets.1.name", "Customers", "stores[0].datasets[1].name", "duplicate dataset name"),
    ("stores.0.datasets.1.columns.0.source", 7, "stores[0].datasets[1].columns[0].source", "expected a string"),
    ("stores.0.datasets.1.columns.0.source", "a\x00b", "stores[0].datasets[1].columns[0].source", "without NUL"),
    ("stores.0.datasets.1.table", "t" * 64, "stores[0].datasets[1].table", "64 bytes long in UTF-8 (at most 63"),
    ("stores.0.datasets.1.table", "ü" * 32, "stores[0].datasets[1].table", "64 bytes long in UTF-8 (at most 63"),
    ("stores.0.datasets.1.primary_key", ["id"], "stores[0].datasets[1].primary_key",
     "unknown key (did you mean 'primaryKey'?"),
    ("stores.0.datasets.1", ["id"], "stores[0].datasets[1]", "expected a mapping"),
    # primary key
    ("stores.0.datasets.1.primaryKey", [], "stores[0].datasets[1].primaryKey", "list is empty"),
    ("stores.0.datasets.1.primaryKey", "id", "stores[0].datasets[1].primaryKey", "expected a list of column names"),
    ("stores.0.datasets.1.primaryKey", ["id", "ID"], "stores[0].datasets[1].primaryKey[1]", "named twice"),
    ("stores.0.datasets.1.primaryKey", ["id", "nope"], "stores[0].datasets[1].primaryKey[1]",
     "no column named 'nope' in this dataset (columns: id, customerid)"),
    ("stores.0.datasets.1.primaryKey", [1], "stores[0].datasets[1].primaryKey[0]", "expected a string"),
    ("stores.0.datasets.1.columns.0.nullable", True, "stores[0].datasets[1].columns[0].nullable",
     "in the primary key, which is never nullable"),
    # columns
    ("stores.0.datasets.1.columns", {"id": "text"}, "stores[0].datasets[1].columns", "expected a list of columns"),
    ("stores.0.datasets.1.columns", [], "stores[0].datasets[1].columns", "list is empty"),
    ("stores.0.datasets.1.columns.1", "customerid", "stores[0].datasets[1].columns[1]", "expected a mapping"),
    ("stores.0.datasets.1.columns.1.name", "customer id", "stores[0].datasets[1].columns[1].name",
     "not a plain identifier"),
    ("stores.0.datasets.1.columns.1.name", "c" * 64, "stores[0].datasets[1].columns[1].name", "(at most 63"),
    ("stores.0.datasets.1.columns.1.name", "ID", "stores[0].datasets[1].columns[1].name", "duplicate column name"),
    ("stores.0.datasets.1.columns.1.name", "DS_BATCH_ID", "stores[0].datasets[1].columns[1].name", "reserved"),
    ("stores.0.datasets.1.columns.1.name", "ds_batch_out", "stores[0].datasets[1].columns[1].name", "reserved"),
    ("stores.0.datasets.1.columns.1.nullable", "yes please", "stores[0].datasets[1].columns[1].nullable",
     "expected true or false"),
    ("stores.0.datasets.1.columns.1.nullable", 1, "stores[0].datasets[1].columns[1].nullable",
     "expected true or false"),
    ("stores.0.datasets.1.columns.1.type", 10, "stores[0].datasets[1].columns[1].type", "expected a string"),
    ("stores.0.datasets.1.columns.1.default", "x", "stores[0].datasets[1].columns[1].default", "unknown key"),
]
MISSING: list[tuple[str, str]] = [
    ("apiVersion", "apiVersion"), ("kind", "kind"), ("stores", "stores"),
    ("stores.0.name", "stores[0].name"), ("stores.0.source", "stores[0].source"),
    ("stores.0.datasets", "stores[0].datasets"), ("stores.0.source.host", "stores[0].source.host"),
    ("stores.0.source.database", "stores[0].source.database"),
    ("stores.0.source.credential", "stores[0].source.credential"),
    ("stores.0.datasets.0.name", "stores[0].datasets[0].name"),
    ("stores.0.datasets.0.primaryKey", "stores[0].datasets[0].primaryKey"),
    ("stores.0.datasets.0.columns", "stores[0].datasets[0].columns"),
    ("stores.0.datasets.0.columns.1.name", "stores[0].datasets[0].columns[1].name"),
    ("stores.0.datasets.0.columns.1.type", "stores[0].datasets[0].columns[1].type"),
]


@pytest.mark.parametrize(("change", "value", "path", "words"), CASES, ids=[f"{c[0]}={c[1]!r}"[:60] for c in CASES])
def test_each_rule_names_file_path_and_problem(change: str, value: object, path: str, words: str) -> None:
    message = problem(with_change(change, value))
    assert message.startswith(f"{FILE}: {path}: "), message
    assert words in message
    assert message.count(f"{FILE}: ") == 1, f"only the one problem is reported: {message}"


@pytest.mark.parametrize(("change", "path"), MISSING, ids=[m[0] for m in MISSING])
def test_missing_required_key(change: str, path: str) -> None:
    message = problem(with_change(change, None, delete=True))
    assert message.startswith(f"{FILE}: {path}: required key is missing"), message


def test_limits_are_inclusive() -> None:
    doc = valid()
    doc["stores"][0]["name"] = "S" + "x" * 39
    doc["stores"][0]["datasets"][1]["name"] = "D" + "y" * 39
    doc["stores"][0]["datasets"][1]["table"] = "t" * 63
    doc["stores"][0]["datasets"][1]["columns"][1]["name"] = "c" * 63
    doc["stores"][0]["source"]["port"] = 1
    s = parse(doc).stores[0]
    assert len(s.name) == 40 and len(s.datasets[1].name) == 40


def test_duplicate_store_names_are_case_insensitive() -> None:
    doc = valid()
    second = copy.deepcopy(doc["stores"][0])
    second["name"] = "STORE1"
    doc["stores"].append(second)
    message = problem(doc)
    assert message.startswith(f"{FILE}: stores[1].name: duplicate store name 'STORE1' (same as stores[0].name")


def test_two_stores_are_fine_and_kept_in_order() -> None:
    doc = valid()
    second = copy.deepcopy(doc["stores"][0])
    second["name"] = "Store2"
    doc["stores"].append(second)
    assert [s.name for s in parse(doc).stores] == ["Store1", "Store2"]


def test_primary_key_order_and_column_spelling() -> None:
    doc = valid()
    ds = doc["stores"][0]["datasets"][1]
    ds["columns"][0]["name"] = "Id"
    ds["primaryKey"] = ["customerID", "ID"]
    dataset = parse(doc).store("Store1").dataset("addresses")
    assert dataset.primary_key == ("customerid", "Id")  # order kept, the columns' own spelling
    assert all(not c.nullable for c in dataset.columns)


def test_invalid_key_column_is_reported_once() -> None:
    """A key naming a column that is present but invalid reports the column, not a missing column."""
    message = problem(with_change("stores.0.datasets.1.columns.0.type", "int"))
    assert message.startswith(f"{FILE}: stores[0].datasets[1].columns[0].type: unknown type 'int'")
    assert "primaryKey" not in message


def test_all_problems_are_listed_on_one_line_with_lines() -> None:
    text = """\
apiVersion: datasurface/v1
kind: Model
stores:
  - name: Store1
    source: {host: pg, database: db, credential: source}
    datasets:
      - name: customers
        primaryKey: [id]
        columns:
          - {name: id, type: varchar(20)}
          - {name: dob, type: "timestamp with time zone"}
          - name: email
            type: varchar2(10)
            nulable: true
"""
    with pytest.raises(ModelValidationError) as info:
        parse_model(text, FILE)
    problems = [(p.path, p.line) for p in info.value.problems]
    assert problems == [
        (("stores", 0, "datasets", 0, "columns", 1, "type"), 11),
        (("stores", 0, "datasets", 0, "columns", 2, "nulable"), 14),
        (("stores", 0, "datasets", 0, "columns", 2, "type"), 13),
    ]
    message = str(info.value)
    assert "\n" not in message
    assert (f"{FILE}: stores[0].datasets[0].columns[1].type: unknown type 'timestamp with time zone'") in message
    assert "(line 11)" in message
    assert f"{FILE}: stores[0].datasets[0].columns[2].nulable: unknown key (did you mean 'nullable'?" in message


def test_malformed_yaml_names_file_and_line() -> None:
    text = "apiVersion: datasurface/v1\nkind: Model\nstores:\n  - name: [Store1\n    source: x\n"
    with pytest.raises(ModelError) as info:
        parse_model(text, FILE)
    message = str(info.value)
    assert message.startswith(f"{FILE}: line ") and "malformed YAML" in message
    assert "\n" not in message


@pytest.mark.parametrize("text", ["a: b: c", "key: 'unterminated", "- a\nb: c", "\t- tab", "---\na: 1\n---\nb: 2",
                                  "a: !!python/object:os.system ls", "a: \x07"])
def test_malformed_or_unsafe_yaml_is_a_model_error(text: str) -> None:
    with pytest.raises(ModelError) as info:
        parse_model(text, FILE)
    assert str(info.value).startswith(f"{FILE}: ")


def test_duplicate_yaml_key_is_an_error() -> None:
    text = yaml.safe_dump(valid(), sort_keys=False).replace("kind: Model\n", "kind: Model\nkind: Model\n")
    with pytest.raises(ModelError) as info:
        parse_model(text, FILE)
    assert str(info.value).startswith(f"{FILE}: kind: duplicate key (first given at line 2) (line 3)")


@pytest.mark.parametrize(("text", "words"), [("", "the file is empty"), ("# only a comment\n", "the file is empty"),
                                               ("- 1\n", "expected a mapping"), ("just text", "expected a mapping")])
def test_empty_or_not_a_mapping(text: str, words: str) -> None:
    with pytest.raises(ModelError) as info:
        parse_model(text, FILE)
    assert str(info.value).startswith(f"{FILE}: (top level): {words}")


def _paths(node: object, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix] if prefix else []
    if isinstance(node, dict):
        for k, v in node.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _paths(v, (*prefix, i))
    return out


@pytest.mark.parametrize("replacement", [None, 0, -1, True, 1.5, "", "x", [], [1], {}, {"a": 1}, [[]], "2020-01-01"])
def test_any_wrong_value_anywhere_is_a_model_error_not_a_crash(replacement: object) -> None:
    for path in _paths(valid()):
        doc = valid()
        target: Any = doc
        for p in path[:-1]:
            target = target[p]
        target[path[-1]] = copy.deepcopy(replacement)
        try:
            parse(doc)
        except ModelValidationError as exc:
            assert str(exc).startswith(f"{FILE}: "), str(exc)
            assert exc.problems


def test_many_problems_are_capped_in_the_message() -> None:
    doc = valid()
    doc["stores"][0]["datasets"][0]["columns"] = [{"name": f"c{i}", "type": "int"} for i in range(25)]
    doc["stores"][0]["datasets"][0]["primaryKey"] = ["c0"]
    with pytest.raises(ModelValidationError) as info:
        parse(doc)
    assert len(info.value.problems) == 25
    message = str(info.value)
    assert message.count("unknown type 'int'") == 10 and message.endswith("; and 15 more problem(s)")


def test_source_type_defaults_to_postgres_and_mysql_defaults_to_port_3306() -> None:
    assert parse(valid()).stores[0].source.type == "postgres"
    doc = valid()
    src = doc["stores"][0]["source"]
    del src["port"], src["schema"]
    src.update(type="mysql", host="/run/mysqld/mysqld.sock")
    s = parse(doc).stores[0].source
    assert (s.type, s.port, s.host) == ("mysql", 3306, "/run/mysqld/mysqld.sock")
    src["port"] = 3307
    assert parse(doc).stores[0].source.port == 3307
    doc = valid()
    doc["stores"][0]["source"]["type"] = "postgres"
    assert parse(doc).stores[0].source.port == 5432


@pytest.mark.parametrize(("value", "words"), [("oracle", "expected postgres or mysql"),
                                              (["mysql"], "expected postgres or mysql")])
def test_unknown_source_type(value: object, words: str) -> None:
    message = problem(with_change("stores.0.source.type", value))
    assert f"{FILE}: stores[0].source.type: {words}" in message


def test_a_mysql_source_has_no_schema() -> None:
    doc = valid()
    doc["stores"][0]["source"]["type"] = "mysql"
    message = problem(doc)
    assert f"{FILE}: stores[0].source.schema: a mysql source has no schema" in message


# --- workspaces (docs/consumers.md) --------------------------------------------------------------------------


def with_workspaces(*workspaces: dict[str, Any]) -> dict[str, Any]:
    doc = valid()
    doc["workspaces"] = list(workspaces)
    return doc


def marketing(**changes: Any) -> dict[str, Any]:
    ws: dict[str, Any] = {"name": "Marketing", "platform": "YellowForensic", "role": "marketing_reader",
                          "datasets": [{"store": "Store1", "dataset": "customers"},
                                       {"store": "Store1", "dataset": "addresses"}]}
    ws.update(changes)
    return ws


def test_workspaces_are_optional_and_parsed() -> None:
    assert parse(valid()).workspaces == ()
    model = parse(with_workspaces(marketing(datasets=[{"store": "store1", "dataset": "CUSTOMERS"}])))
    (ws,) = model.workspaces
    assert (ws.name, ws.platform, ws.role, ws.schema) == ("Marketing", "YellowForensic", "marketing_reader",
                                                          "ws_marketing")
    assert [(d.store, d.dataset) for d in ws.datasets] == [("Store1", "customers")]  # the model's spelling


@pytest.mark.parametrize(("ws", "path", "words"), [
    (marketing(datasets=[{"store": "Store9", "dataset": "customers"}]), "workspaces[0].datasets[0].store",
     "no store named 'Store9'"),
    (marketing(datasets=[{"store": "Store1", "dataset": "orders"}]), "workspaces[0].datasets[0].dataset",
     "has no dataset named 'orders'"),
    (marketing(datasets=[{"store": "Store1", "dataset": "customers"}, {"store": "Store1", "dataset": "customers"}]),
     "workspaces[0].datasets[1]", "listed twice"),
    (marketing(datasets=[]), "workspaces[0].datasets", "the list is empty"),
    (marketing(datasets=[{"store": "Store1"}]), "workspaces[0].datasets[0].dataset", "required key is missing"),
    (marketing(datasets=[{"store": "Store1", "dataset": "customers", "x": 1}]), "workspaces[0].datasets[0].x",
     "unknown key"),
    (marketing(name="Mar-keting"), "workspaces[0].name", "not a plain identifier"),
    (marketing(name="M" * 41), "workspaces[0].name", "at most 40"),
    (marketing(platform=""), "workspaces[0].platform", "must not be empty"),
    (marketing(role=3), "workspaces[0].role", "expected a string"),
    (marketing(role="r" * 64), "workspaces[0].role", "not a valid role name"),
    (marketing(colour="red"), "workspaces[0].colour", "unknown key"),
])
def test_workspace_rules_name_the_path(ws: dict[str, Any], path: str, words: str) -> None:
    message = problem(with_workspaces(ws))
    assert f"{FILE}: {path}" in message or f"{path}:" in message, message
    assert words in message, message


def test_workspace_names_are_unique_case_insensitively() -> None:
    message = problem(with_workspaces(marketing(), marketing(name="MARKETING")))
    assert "workspaces[1].name" in message and "duplicate workspace name" in message, message


def test_workspaces_must_be_a_list() -> None:
    doc = valid()
    doc["workspaces"] = {"name": "x"}
    assert "expected a list of workspaces" in problem(doc)


def test_exact_source_names_are_kept_as_written() -> None:
    doc = with_change("stores.0.datasets.1.table", "Customer Orders ✓")
    doc["stores"][0]["datasets"][1]["columns"][0]["source"] = "CustomerID"
    dataset = parse(doc).store("Store1").datasets[1]
    assert dataset.table == "Customer Orders ✓"
    first = dataset.columns[0]
    assert (first.source, first.source_name) == ("CustomerID", "CustomerID")
    assert dataset.columns[1].source is None and dataset.columns[1].source_name == dataset.columns[1].name
