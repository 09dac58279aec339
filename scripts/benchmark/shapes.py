"""The benchmark's source tables: their shapes (columns, types, generator expressions) and churn updates."""

from __future__ import annotations

OPEN_END = 2147483647  # ds_batch_out of a current row version
STORE = "Bench"

# (name, type, generator expression over g = generate_series value); key column first.
NARROW = [
    ("id", "bigint", "g"),
    ("name", "varchar(40)", "'name-' || g"),
    ("amount", "numeric(12,2)", "(g % 100000) / 100.0"),
    ("qty", "integer", "(g % 997)::integer"),
    ("created", "date", "date '2020-01-01' + (g % 2000)::integer"),
    ("note", "text", "md5(g::text)"),
]


def _nullable(expression: str, salt: int) -> str:
    """About 10% NULLs, a different 10% per column."""
    return f"CASE WHEN (g * 7 + {salt}) % 10 = 0 THEN NULL ELSE {expression} END"


def _wide() -> list[tuple[str, str, str]]:
    columns = [("id", "bigint", "g"), ("version", "integer", "0")]
    kinds = [
        ("integer", "((g * {s}) % 100000)::integer"),
        ("bigint", "g * {s}"),
        ("numeric(14,4)", "((g * {s}) % 1000000) / 10000.0"),
        ("double precision", "(g * {s}) / 7.0"),
        ("boolean", "(g + {s}) % 3 = 0"),
        ("varchar(60)", "'v{s}-' || (g * {s})"),
        ("text", "md5((g + {s})::text)"),
        ("date", "date '2000-01-01' + ((g * {s}) % 9000)::integer"),
        ("timestamptz", "timestamptz '2020-01-01 00:00:00+00' + ((g * {s}) % 100000000) * interval '1 second'"),
        ("timestamp", "timestamp '2021-01-01' + ((g + {s}) % 1000000) * interval '1 minute'"),
        ("uuid", "md5((g * {s})::text)::uuid"),
        ("smallint", "((g + {s}) % 30000)::smallint"),
        ("jsonb", "jsonb_build_object('k', g % 100, 's', {s})"),
        ("char(8)", "lpad(((g + {s}) % 100000000)::text, 8, '0')"),
    ]
    salt = 1
    while len(columns) < 30:
        column_type, expression = kinds[(len(columns) - 2) % len(kinds)]
        columns.append((f"c{len(columns):02d}", column_type, _nullable(expression.format(s=salt), salt)))
        salt += 1
    # the types a real operational table adds, each compared by its text in the diff
    extra = [
        ("integer[]", "ARRAY[(g * {s}) % 1000, g % 7, NULL]::integer[]"),
        ("json", "json_build_object('k', g % 100, 's', {s})"),
        ("interval", "((g * {s}) % 100000) * interval '1 second'"),
    ]
    for column_type, expression in extra:
        columns.append((f"c{len(columns):02d}", column_type, _nullable(expression.format(s=salt), salt)))
        salt += 1
    return columns


SHAPES = {"narrow": NARROW, "wide": _wide()}
# the column each shape's updates change (never NULL, so the update always changes the row)
UPDATE_SET = {"narrow": "amount = amount + 1, note = md5(note)", "wide": "version = version + 1"}


def column_names(shape: str) -> str:
    """The shape's columns, quoted and comma-separated."""
    return ", ".join(f'"{name}"' for name, _, _ in SHAPES[shape])


def merge_table(mode: str, shape: str) -> str:
    """The job's merge table of `shape` on the benchmark's platform for `mode`, quoted and qualified."""
    return f'"bench_{mode}"."{STORE.lower()}_{shape}"'
