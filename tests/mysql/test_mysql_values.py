"""Exact value semantics of MySQL types read into the model's PostgreSQL types (README: "MySQL and MariaDB
sources"), the type check's refusals naming both types, and values refused row by row naming the key."""

from __future__ import annotations

import datetime as dt
import decimal
from pathlib import Path
from typing import Any

import pytest

from datasurface.ingest.mysql.types import MySqlType, accepts
from tests.support.engine import assert_one_line_error, merge_args, run_job, write_model
from tests.support.mysql import mysql_model

UTC = dt.UTC


@pytest.mark.parametrize(("model", "source", "ok"), [
    ("boolean", MySqlType("tinyint", width=1), True),
    ("boolean", MySqlType("tinyint", width=4), False),
    ("boolean", MySqlType("tinyint", unsigned=True, width=1), False),
    ("smallint", MySqlType("tinyint", unsigned=True), True),
    ("smallint", MySqlType("smallint", unsigned=True), False),
    ("integer", MySqlType("smallint", unsigned=True), True),
    ("integer", MySqlType("int", unsigned=True), False),
    ("bigint", MySqlType("int", unsigned=True), True),
    ("bigint", MySqlType("bigint", unsigned=True), False),
    ("numeric(20,0)", MySqlType("bigint", unsigned=True), True),
    ("numeric(19,0)", MySqlType("bigint", unsigned=True), False),
    ("numeric", MySqlType("bigint", unsigned=True), True),
    ("numeric(12,3)", MySqlType("decimal", precision=12, scale=3), True),
    ("numeric(14,4)", MySqlType("decimal", precision=12, scale=3), True),
    ("numeric(12,2)", MySqlType("decimal", precision=12, scale=3), False),
    ("numeric(11,3)", MySqlType("decimal", precision=12, scale=3), False),
    ("real", MySqlType("float"), True),
    ("double precision", MySqlType("float"), True),
    ("real", MySqlType("double"), False),
    ("varchar(30)", MySqlType("varchar", length=30), True),
    ("varchar(30)", MySqlType("varchar", length=31), False),
    ("text", MySqlType("varchar", length=31), True),
    ("text", MySqlType("char", length=5), False),
    ("char(5)", MySqlType("char", length=5), True),
    ("char(5)", MySqlType("varchar", length=5), False),
    ("text", MySqlType("longtext"), True),
    ("timestamp", MySqlType("datetime", precision=6), True),
    ("timestamptz", MySqlType("datetime", precision=6), False),
    ("timestamptz", MySqlType("timestamp", precision=3), True),
    ("timestamp", MySqlType("timestamp"), False),
    ("jsonb", MySqlType("json"), True),
    ("jsonb", MySqlType("longtext"), False),
    ("json", MySqlType("json"), True),
    ("json", MySqlType("longtext"), False),
    ("interval", MySqlType("time"), False),
    ("inet", MySqlType("varchar", length=45), False),
    ("macaddr", MySqlType("char", length=17), False),
    ("text[]", MySqlType("json"), False),
    ("bytea", MySqlType("binary", length=16), True),
    ("bytea", MySqlType("longblob"), True),
    ("uuid", MySqlType("uuid"), True),
    ("uuid", MySqlType("char", length=36), False),
    ("date", MySqlType("datetime"), False),
    ("text", MySqlType("enum"), False),
    ("integer", MySqlType("year"), False),
])
def test_type_mapping(model: str, source: MySqlType, ok: bool) -> None:
    assert accepts(model, source) is ok


COLUMNS = [
    ("id", "int", "integer"), ("flag", "tinyint(1)", "boolean"), ("small", "tinyint unsigned", "smallint"),
    ("big", "bigint unsigned", "numeric(20,0)"), ("price", "decimal(12,3)", "numeric(12,3)"),
    ("f", "float", "real"), ("f64", "float", "double precision"), ("d", "double", "double precision"),
    ("fixed", "char(5)", "char(5)"), ("name", "varchar(60)", "varchar(60)"), ("body", "mediumtext", "text"),
    ("day", "date", "date"), ("local", "datetime(6)", "timestamp"), ("instant", "timestamp(6) NULL", "timestamptz"),
    ("clock", "time(3)", "time"), ("doc", "json", "jsonb"), ("raw", "binary(4)", "bytea"), ("blobby", "blob", "bytea"),
    ("u", "uuid", "uuid"),
]


def _table(mysql_dbs: Any, tmp_path: Path, columns: list[tuple[str, str, str]] = COLUMNS,
           rows: list[tuple[Any, ...]] = (), sql_mode: str | None = None, tz: str = "+00:00") -> Path:
    src = mysql_dbs.connect_source()
    with src.cursor() as cur:
        cur.execute(f"SET time_zone = '{tz}'")
        if sql_mode is not None:
            cur.execute(f"SET sql_mode = '{sql_mode}'")
        cur.execute("CREATE TABLE t (" + ", ".join(f"`{n}` {t}" for n, t, _ in columns) + ", PRIMARY KEY (id))")
        for row in rows:
            cur.execute(f"INSERT INTO t ({', '.join(n for n, _, _ in columns[:len(row)])}) VALUES "
                        f"({', '.join(['%s'] * len(row))})", row)
    src.commit()
    src.close()
    datasets = {"t": ([(n, m) for n, _, m in columns], ("id",))}
    return write_model(tmp_path / "model", mysql_model(mysql_dbs.host, mysql_dbs.source, datasets=datasets))


def test_values_are_exact(mysql_dbs: Any, tmp_path: Path) -> None:
    text = "emoji 😀 𝄞 ünï \"q\" 'a',\n\t\\ NULL\r\n\\N \\."
    full = (1, 1, 255, 18446744073709551615, decimal.Decimal("-123456789.125"), 0.1, 0.1, 0.1, "ab", text, "",
            dt.date(2024, 2, 29), dt.datetime(2021, 3, 28, 2, 30, 0, 123456),
            dt.datetime(2038, 1, 19, 3, 14, 7, 999999),
            dt.timedelta(hours=23, minutes=59, seconds=59, milliseconds=999),
            '{"b": [1, 2.5, null], "a": "😀", "c": "tab\\t line\\n back\\\\"}',
            b"\x00\xff", b"\x00\x01\\\n,", "6ccd780c-baba-1026-9564-5b8c656024db")
    model = _table(mysql_dbs, tmp_path, rows=[full, (2, 0), (3,)], tz="+05:00")
    mysql_dbs.server.admin_connect().cursor().execute("SET GLOBAL time_zone = '+05:00'")  # the job must not use it
    try:
        proc = run_job(merge_args(model, "Val", "live", mysql_dbs), mysql_dbs.env)
    finally:
        mysql_dbs.server.admin_connect().cursor().execute("SET GLOBAL time_zone = '+00:00'")
    assert proc.returncode == 0, proc.stderr
    mrg = mysql_dbs.connect_merge()
    with mrg.cursor() as cur:
        cur.execute("SET TimeZone = 'UTC'")
        cur.execute("SELECT * FROM val.t_current ORDER BY id".replace("t_current", "store1_t_current"))
        got = cur.fetchall()
        cur.execute("SELECT f = real '0.1', f64 = double precision '0.1', d = double precision '0.1', "
                    "fixed = 'ab'::char(5), octet_length(fixed::text), doc->'b'->>1 FROM val.store1_t WHERE id = 1")
        checks = cur.fetchone()
    mrg.close()
    row = got[0]
    assert row[:5] == (1, True, 255, decimal.Decimal("18446744073709551615"), decimal.Decimal("-123456789.125"))
    assert checks == (True, False, True, True, 2, "2.5")  # a float32 read exactly: 0.1f is not 0.1
    assert row[8:11] == ("ab   ", text, "")  # char(n): MySQL drops trailing spaces, PostgreSQL pads them
    assert row[11] == dt.date(2024, 2, 29)
    assert row[12] == dt.datetime(2021, 3, 28, 2, 30, 0, 123456)  # datetime: the wall clock, as written
    # timestamp: an instant; written at +05:00, it is 22:14:07 UTC the day before
    assert row[13] == dt.datetime(2038, 1, 18, 22, 14, 7, 999999, tzinfo=UTC)
    assert row[14] == dt.time(23, 59, 59, 999000)
    assert row[15] == {"a": "😀", "b": [1, 2.5, None], "c": "tab\t line\n back\\"}
    assert (bytes(row[16]), bytes(row[17])) == (b"\x00\xff\x00\x00", b"\x00\x01\\\n,")  # binary(4) pads with 0x00
    assert row[18] == "6ccd780c-baba-1026-9564-5b8c656024db"
    assert got[1][:2] == (2, False) and all(v is None for v in got[1][2:])
    assert all(v is None for v in got[2][1:])


@pytest.mark.parametrize(("column", "value", "fragment"), [
    (("day", "date", "date"), "0000-00-00", "column 'day' holds '0000-00-00', a zero or invalid date"),
    (("local", "datetime", "timestamp"), "2020-00-10 00:00:00", "a zero or invalid datetime"),
    (("flag", "tinyint(1)", "boolean"), 2, "column 'flag' holds '2', a tinyint(1) that is neither 0 nor 1"),
    (("clock", "time", "time"), "-01:00:00", "holds '-01:00:00', a time outside 00:00:00..23:59:59.999999"),
    (("note", "varchar(20)", "text"), "a\x00b", "column 'note' holds 'a\\x00b', a NUL character, which PostgreSQL"),
])
def test_values_postgresql_cannot_hold_are_refused_naming_the_key(mysql_dbs: Any, tmp_path: Path, column: Any,
                                                                 value: Any, fragment: str) -> None:
    model = _table(mysql_dbs, tmp_path, [("id", "int", "integer"), column], [(1, None), (41, value)], sql_mode="")
    proc = run_job(merge_args(model, "Zero", "live", mysql_dbs), mysql_dbs.env)
    assert_one_line_error(proc, "source table t (dataset t), key (id)=(41)", fragment)


@pytest.mark.parametrize(("mysql", "model", "fragment"), [
    ("tinyint", "boolean", "column 'c' is tinyint in the source but boolean in the model"),
    ("int unsigned", "integer", "column 'c' is int unsigned in the source but integer in the model"),
    ("longtext", "jsonb", "column 'c' is longtext in the source but jsonb in the model"),
    ("datetime", "timestamptz", "column 'c' is datetime in the source but timestamptz in the model"),
    ("enum('a','b')", "text", "column 'c' is enum in the source but text in the model"),
    ("time", "interval", "column 'c' is time in the source but interval in the model"),
    ("varchar(45)", "inet", "column 'c' is varchar(45) in the source but inet in the model"),
    ("json", "integer[]", "column 'c' is json in the source but integer[] in the model, and json does not hold "
     "exactly the values of integer[] (a integer[] column reads none: MySQL has no arrays)"),
    ("longtext", "json", "column 'c' is longtext in the source but json in the model"),
])
def test_types_without_exact_values_are_refused(mysql_dbs: Any, tmp_path: Path, mysql: str, model: str,
                                                fragment: str) -> None:
    path = _table(mysql_dbs, tmp_path, [("id", "int", "integer"), ("c", mysql, model)])
    proc = run_job(merge_args(path, "Types", "live", mysql_dbs), mysql_dbs.env)
    assert_one_line_error(proc, fragment)


def test_null_and_empty_text_and_extreme_values_whatever_the_columns_nullability(mysql_dbs: Any,
                                                                                 tmp_path: Path) -> None:
    """The read leaves NULL handling to the text columns the result says can be NULL: a NOT NULL column's
    '' stays '', a nullable column's NULL stays NULL, and a NOT NULL column seen through a view's outer join
    (NULL there) is NULL too. Extreme numbers and dates arrive as the server's text, exactly."""
    most = decimal.Decimal("-" + "9" * 35 + "." + "9" * 30)  # decimal(65,30)'s smallest value
    src = mysql_dbs.connect_source()
    with src.cursor() as cur:
        cur.execute("CREATE TABLE t (id bigint NOT NULL PRIMARY KEY, a varchar(10) NOT NULL, b text NOT NULL, "
                    "c varchar(10), d double, n decimal(65,30), day date, at datetime(6)) ENGINE=InnoDB")
        cur.execute("CREATE TABLE u (id bigint NOT NULL PRIMARY KEY, name varchar(10) NOT NULL) ENGINE=InnoDB")
        cur.executemany("INSERT INTO t VALUES (%s, %s, %s, %s, %s, %s, %s, %s)", [
            (-9223372036854775808, "", "", None, 1.7976931348623157e308, most,
             dt.date(1000, 1, 1), dt.datetime(1000, 1, 1, 0, 0, 0, 1)),
            (9223372036854775807, "x", "", "", 5e-324, decimal.Decimal("0." + "0" * 29 + "1"),
             dt.date(9999, 12, 31), dt.datetime(9999, 12, 31, 23, 59, 59, 999999)),
            (3, "NULL", "\\N", "\"\"", -0.0, decimal.Decimal(0), None, None)])
        cur.execute("INSERT INTO u VALUES (3, '')")
        cur.execute("CREATE VIEW v AS SELECT t.id, u.name FROM t LEFT JOIN u ON u.id = t.id")
    src.commit()
    src.close()
    datasets = {"t": ([("id", "bigint"), ("a", "varchar(10)"), ("b", "text"), ("c", "varchar(10)"),
                       ("d", "double precision"), ("n", "numeric"), ("day", "date"), ("at", "timestamp")], ("id",)),
                "v": ([("id", "bigint"), ("name", "varchar(10)")], ("id",))}
    model = write_model(tmp_path / "model", mysql_model(mysql_dbs.host, mysql_dbs.source, datasets=datasets))
    proc = run_job(merge_args(model, "Nulls", "live", mysql_dbs), mysql_dbs.env)
    assert proc.returncode == 0, proc.stderr
    mrg = mysql_dbs.connect_merge()
    with mrg.cursor() as cur:
        cur.execute("SELECT * FROM nulls.store1_t_current ORDER BY id")
        got = cur.fetchall()
        cur.execute("SELECT * FROM nulls.store1_v_current ORDER BY id")
        view = cur.fetchall()
    mrg.close()
    assert got == [
        (-9223372036854775808, "", "", None, 1.7976931348623157e308, most,
         dt.date(1000, 1, 1), dt.datetime(1000, 1, 1, 0, 0, 0, 1)),
        (3, "NULL", "\\N", "\"\"", -0.0, decimal.Decimal("0E-30"), None, None),
        (9223372036854775807, "x", "", "", 5e-324, decimal.Decimal("0." + "0" * 29 + "1"),
         dt.date(9999, 12, 31), dt.datetime(9999, 12, 31, 23, 59, 59, 999999))]
    assert view == [(-9223372036854775808, None), (3, ""), (9223372036854775807, None)]


def test_json_keeps_the_text_the_source_shows(mysql_dbs: Any, tmp_path: Path) -> None:
    """Model json holds MariaDB's JSON text as written: a change of spacing or key order is an update; the
    same source column read as jsonb sees no change."""
    columns = [("id", "int", "integer"), ("j", "json", "json"), ("jb", "json", "jsonb")]
    model = _table(mysql_dbs, tmp_path, columns, [(1, '{"a":1,"b":2}', '{"a":1,"b":2}'), (2, "[1, 2.50]", "[1, 2.50]")])
    args = merge_args(model, "Js", "forensic", mysql_dbs)
    first = run_job(args, mysql_dbs.env)
    assert first.returncode == 0, first.stderr
    src = mysql_dbs.connect_source()
    with src.cursor() as cur:
        cur.execute("""UPDATE t SET j = '{"b": 2, "a": 1}', jb = '{"b": 2, "a": 1}' WHERE id = 1""")
        cur.execute("SELECT id, j FROM t ORDER BY id")
        source = cur.fetchall()
    src.commit()
    src.close()
    second = run_job(args, mysql_dbs.env)
    assert second.returncode == 0, second.stderr
    assert "inserted=0 updated=1 deleted=0" in second.stdout
    mrg = mysql_dbs.connect_merge()
    with mrg.cursor() as cur:
        cur.execute("SELECT id, j::text FROM js.store1_t_current ORDER BY id")
        assert cur.fetchall() == list(source)
        cur.execute("SELECT jb::text FROM js.store1_t_current WHERE id = 1")
        assert cur.fetchone() == ('{"a": 1, "b": 2}',)
    mrg.close()


def test_exact_names_and_keywords_in_backticks(mysql_dbs: Any, tmp_path: Path) -> None:
    src = mysql_dbs.connect_source()
    with src.cursor() as cur:
        cur.execute("CREATE TABLE `Customer Orders ✓` (`CustomerID` int NOT NULL, `user` int NOT NULL, "
                    "`Straße Name` varchar(20), `order` date, `Sel``ect` text, PRIMARY KEY (`CustomerID`, `user`)) "
                    "ENGINE=InnoDB")
        cur.execute("INSERT INTO `Customer Orders ✓` VALUES (1, 10, 'Haupt', '2024-02-29', 'q'), "
                    "(2, 20, NULL, NULL, NULL)")
    src.commit()
    columns = [{"name": "customer_id", "source": "CustomerID", "type": "integer"}, {"name": "user", "type": "integer"},
               {"name": "street", "source": "Straße Name", "type": "varchar(20)"}, {"name": "order", "type": "date"},
               {"name": "quoted", "source": "Sel`ect", "type": "text"}]
    doc = mysql_model(mysql_dbs.host, mysql_dbs.source, datasets={})
    doc["stores"][0]["datasets"] = [{"name": "orders", "table": "Customer Orders ✓",
                                     "primaryKey": ["customer_id", "user"], "columns": columns}]
    model = write_model(tmp_path / "model", doc)
    proc = run_job(merge_args(model, "Names", "live", mysql_dbs), mysql_dbs.env)
    assert proc.returncode == 0, proc.stderr
    mrg = mysql_dbs.connect_merge()
    with mrg.cursor() as cur:
        cur.execute('SELECT customer_id, "user", street, "order", quoted FROM names.store1_orders_current ORDER BY 1')
        assert cur.fetchall() == [(1, 10, "Haupt", dt.date(2024, 2, 29), "q"), (2, 20, None, None, None)]
    mrg.close()
    # a value PostgreSQL cannot hold is named by the model's key and column names, read by the source's
    with src.cursor() as cur:
        cur.execute("SET sql_mode = ''")
        cur.execute("INSERT INTO `Customer Orders ✓` VALUES (3, 30, NULL, '0000-00-00', NULL)")
    src.commit()
    src.close()
    proc = run_job(merge_args(model, "Names", "live", mysql_dbs), mysql_dbs.env)
    assert_one_line_error(proc, "key (customer_id, user)=(3, 30): column 'order' holds '0000-00-00'")
