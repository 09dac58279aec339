"""How the model's column types (docs/model.md) are spelled by PostgreSQL's `format_type()`.

Used to check a source table against the model and a merge table against the model.
"""

from __future__ import annotations

import re

_FIXED = {
    "timestamp": "timestamp without time zone",
    "timestamptz": "timestamp with time zone",
    "time": "time without time zone",
}
_PARAM = {"varchar": "character varying", "char": "character"}


def catalog_spelling(model_type: str) -> str:
    """`varchar(20)` -> `character varying(20)`; types PostgreSQL spells as we do are returned as is."""
    t = model_type.strip().lower()
    if t.endswith("[]"):
        return catalog_spelling(t[:-2]) + "[]"
    if t in _FIXED:
        return _FIXED[t]
    match = re.fullmatch(r"(varchar|char)\((\d+)\)", t)
    if match:
        return f"{_PARAM[match.group(1)]}({match.group(2)})"
    return t


def same_type(model_type: str, catalog_type: str) -> bool:
    return catalog_spelling(model_type) == catalog_type.strip().lower()
