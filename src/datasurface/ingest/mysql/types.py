"""Which MySQL / MariaDB column types hold exactly the values of each model (PostgreSQL) type.

A source column is accepted for a model column when every value the source column can hold is a value
of the model type, read without rounding, truncation or a change of meaning (README, "MySQL and MariaDB
sources"). The few values a MySQL type holds beyond that (a `tinyint(1)` of 2, a zero date, a `time` of
-1:00) are refused row by row when read, naming the key (see `mysql.py`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

_INT_RANGES = {  # MySQL integer type -> (signed range, unsigned range)
    "tinyint": ((-(2**7), 2**7 - 1), (0, 2**8 - 1)),
    "smallint": ((-(2**15), 2**15 - 1), (0, 2**16 - 1)),
    "mediumint": ((-(2**23), 2**23 - 1), (0, 2**24 - 1)),
    "int": ((-(2**31), 2**31 - 1), (0, 2**32 - 1)),
    "bigint": ((-(2**63), 2**63 - 1), (0, 2**64 - 1)),
}
_MODEL_INT_RANGES = {"smallint": _INT_RANGES["smallint"][0], "integer": _INT_RANGES["int"][0],
                     "bigint": _INT_RANGES["bigint"][0]}
TEXT_TYPES = ("tinytext", "text", "mediumtext", "longtext")
_BLOB = ("tinyblob", "blob", "mediumblob", "longblob")
_NUMERIC = re.compile(r"numeric(?:\((\d+)(?:,(\d+))?\))?")
_LENGTH = re.compile(r"(varchar|char)\((\d+)\)")


@dataclass(frozen=True)
class MySqlType:
    """A reflected source column type, in MySQL's own spelling (`int unsigned`, `decimal(12,3)`)."""

    name: str  # lower case base name: tinyint, int, decimal, varchar, datetime, json, uuid, ...
    unsigned: bool = False
    width: int | None = None  # integer display width (tinyint(1) is MySQL's boolean)
    precision: int | None = None  # decimal precision, or fractional-second digits of date/time types
    scale: int | None = None
    length: int | None = None

    def __str__(self) -> str:
        args = ""
        if self.name == "decimal":
            args = f"({self.precision},{self.scale or 0})"
        elif self.name in ("datetime", "timestamp", "time") and self.precision:
            args = f"({self.precision})"
        elif self.length is not None:
            args = f"({self.length})"
        elif self.name == "tinyint" and self.width == 1:
            args = "(1)"
        return self.name + args + (" unsigned" if self.unsigned else "")

    @property
    def is_boolean(self) -> bool:
        return self.name == "tinyint" and self.width == 1 and not self.unsigned


def from_sqlalchemy(sa_type: object, *, json: bool = False) -> MySqlType:
    """The reflected SQLAlchemy type of a column (`inspect(conn).get_columns`) in MySQL's spelling.

    `json`: the column is MariaDB's JSON (a longtext with a `json_valid` check)."""
    visit = str(getattr(sa_type, "__visit_name__", type(sa_type).__name__)).lower()
    if json:
        return MySqlType("json")
    name = {"integer": "int", "numeric": "decimal", "nchar": "char", "nvarchar": "varchar", "real": "double"}.get(
        visit, visit)

    def get(attr: str) -> Any:
        return getattr(sa_type, attr, None)

    if name in _INT_RANGES:
        return MySqlType(name, unsigned=bool(get("unsigned")), width=get("display_width"))
    if name == "decimal":
        return MySqlType(name, unsigned=bool(get("unsigned")), precision=get("precision") or 10,
                         scale=get("scale") or 0)
    if name in ("datetime", "timestamp", "time"):
        return MySqlType(name, precision=get("fsp") or 0)
    if name in ("char", "varchar", "binary", "varbinary"):
        return MySqlType(name, length=get("length"))
    if name in ("float", "double"):
        return MySqlType(name, unsigned=bool(get("unsigned")))
    return MySqlType(name)


def _numeric_holds(model: str, digits_before: int, scale: int) -> bool:
    """numeric(P,S) holds every value with `digits_before` integer digits and `scale` decimals."""
    match = _NUMERIC.fullmatch(model)
    if match is None:
        return False
    if match.group(1) is None:
        return True  # unconstrained numeric holds any decimal or integer exactly
    p, s = int(match.group(1)), int(match.group(2) or 0)
    return s >= scale and p - s >= digits_before


def accepts(model_type: str, source: MySqlType) -> bool:
    """True when every value of the source type is, exactly, a value of the model type."""
    m = model_type.replace(" ", "") if model_type.startswith("numeric") else model_type
    n = source.name
    if n in _INT_RANGES:
        lo, hi = _INT_RANGES[n][1 if source.unsigned else 0]
        if m == "boolean":
            return source.is_boolean  # 0/1; any other value is refused when read
        if m in _MODEL_INT_RANGES:
            mlo, mhi = _MODEL_INT_RANGES[m]
            return mlo <= lo and hi <= mhi
        return _numeric_holds(m, len(str(max(abs(lo), hi))), 0)
    if n == "decimal":
        return _numeric_holds(m, (source.precision or 10) - (source.scale or 0), source.scale or 0)
    if n == "float":
        return m in ("real", "double precision")  # a float32 is exactly a float32 and a float64
    if n == "double":
        return m == "double precision"
    if n in ("char", "varchar"):
        length = _LENGTH.fullmatch(m)
        if m == "text":
            return n == "varchar"  # char(n) drops trailing spaces in MySQL and pads them in PostgreSQL
        return length is not None and length.group(1) == n and int(length.group(2)) == source.length
    if n in TEXT_TYPES:
        return m == "text"
    if n in ("binary", "varbinary", *_BLOB):
        return m == "bytea"
    if n == "json":
        return m in ("jsonb", "json")  # json keeps the text MySQL (normalised) or MariaDB (as written) shows
    simple = {"date": "date", "datetime": "timestamp", "timestamp": "timestamptz", "time": "time", "uuid": "uuid"}
    return simple.get(n) == m


# what the README's table says, for the refusal message
ACCEPTED = {
    "boolean": "tinyint(1)",
    "smallint": "tinyint, tinyint unsigned, smallint",
    "integer": "tinyint .. int, smallint unsigned, mediumint unsigned",
    "bigint": "tinyint .. bigint, int unsigned",
    "numeric": "decimal(p,s) or any integer type",
    "real": "float",
    "double precision": "double, float",
    "varchar": "varchar(n) of the same n",
    "char": "char(n) of the same n",
    "text": "tinytext, text, mediumtext, longtext, varchar(n)",
    "date": "date",
    "timestamp": "datetime(fsp)",
    "timestamptz": "timestamp(fsp)",
    "time": "time(fsp)",
    "uuid": "uuid (MariaDB 10.7+)",
    "jsonb": "json",
    "json": "json",
    "bytea": "binary(n), varbinary(n), tinyblob, blob, mediumblob, longblob",
}


def accepted_for(model_type: str) -> str:
    if model_type.endswith("[]"):
        return "none: MySQL has no arrays"
    base = re.sub(r"\(.*", "", model_type)
    if base == "numeric" and "(" in model_type:
        return "decimal(p,s) with at most as many integer digits and decimals, or an integer type that fits"
    return ACCEPTED.get(base, "none")
