#!/usr/bin/env python3
"""Write the values table of charts/datasurface/README.md from the `# --` comments of values.yaml.

Each key documented with a `# --` comment (continued on the following `#` lines) gets a row, and so does
every other leaf key, described by values.schema.json. The table sits between the README's
`<!-- values:start -->` and `<!-- values:end -->` markers; everything else in the README is hand-written.

    scripts/chart-readme.py           rewrite the table
    scripts/chart-readme.py --check   exit 1 (saying so) when the README is not current
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

import yaml

CHART = Path(__file__).resolve().parents[1] / "charts" / "datasurface"
START, END = "<!-- values:start -->", "<!-- values:end -->"
_KEY = re.compile(r"^(\s*)([A-Za-z0-9_.-]+):(\s|$)")
_DOC = re.compile(r"^\s*# -- ?(.*)$")
_MORE = re.compile(r"^\s*#(?: (.*))?$")
_MAX_DEFAULT = 80


def _lookup(values: Any, path: list[str]) -> tuple[bool, Any]:
    for part in path:
        if not isinstance(values, dict) or part not in values:
            return False, None
        values = values[part]
    return True, values


def _schema_description(schema: dict[str, Any], path: list[str]) -> str:
    node: dict[str, Any] = schema
    for part in path:
        extra = node.get("additionalProperties")
        node = node.get("properties", {}).get(part) or (extra if isinstance(extra, dict) else {})
    return str(node.get("description", ""))


def _markdown(text: str) -> str:
    """A table cell: `|` escaped, and `<` `>` outside code spans (or "<fullname>" would vanish as HTML)."""
    parts = text.replace("|", "\\|").split("`")
    for i in range(0, len(parts), 2):
        parts[i] = parts[i].replace("<", "&lt;").replace(">", "&gt;")
    return "`".join(parts)


def documented_keys(values_text: str) -> list[tuple[list[str], str]]:
    """(key path, `# --` description) for every key of values.yaml, in file order ("" when undocumented);
    keys inside lists (e.g. the example platforms) are not keys of the chart and are left out."""
    values = yaml.safe_load(values_text)
    stack: list[tuple[int, str]] = []
    pending: list[str] | None = None
    out: list[tuple[list[str], str]] = []
    for line in values_text.splitlines():
        doc = _DOC.match(line)
        if doc:
            pending = [doc.group(1).strip()]
            continue
        more = _MORE.match(line)
        if more and pending is not None:
            pending.append((more.group(1) or "").strip())
            continue
        key = _KEY.match(line)
        if key:
            indent = len(key.group(1))
            while stack and stack[-1][0] >= indent:
                stack.pop()
            path = [k for _, k in stack] + [key.group(2)]
            stack.append((indent, key.group(2)))
            if _lookup(values, path)[0]:
                out.append((path, " ".join(p for p in (pending or []) if p)))
        pending = None
    return out


def _has_own_rows(schema: dict[str, Any], path: list[str]) -> bool:
    """Whether the schema describes this map's keys (else its default is shown whole: a securityContext)."""
    node: dict[str, Any] = schema
    for part in path:
        node = node.get("properties", {}).get(part, {})
    return bool(node.get("properties"))


def _default(value: Any, whole: bool = False) -> str:
    text = json.dumps(value, separators=(", ", ": "))
    if len(text) > _MAX_DEFAULT and not whole:
        text = "{…}" if isinstance(value, dict) else "[…]" if isinstance(value, list) else text[:_MAX_DEFAULT] + "…"
    return f"`{text}`"


def values_table(values_text: str, schema: dict[str, Any]) -> str:
    values = yaml.safe_load(values_text)
    rows = ["| Key | Default | Description |", "|---|---|---|"]
    shown_whole: list[list[str]] = []
    for path, doc in documented_keys(values_text):
        if any(path[:len(p)] == p for p in shown_whole):
            continue  # inside a map shown whole
        value = _lookup(values, path)[1]
        is_map = isinstance(value, dict) and bool(value)
        whole = is_map and not _has_own_rows(schema, path)
        if whole:
            shown_whole.append(path)
        description = doc or _schema_description(schema, path)
        if not description or (is_map and not doc and not whole):
            continue  # an undocumented map's keys have rows of their own
        rows.append(f"| `{'.'.join(path)}` | {_default(value, whole)} | {_markdown(description)} |")
    return "\n".join(rows)


def render_readme(readme: str, table: str) -> str:
    if START not in readme or END not in readme:
        raise SystemExit(f"chart-readme: the README has no {START} ... {END} section")
    head, rest = readme.split(START, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{START}\n{table}\n{END}{tail}"


def current_readme(chart: Path | None = None) -> tuple[str, str]:
    """(the README as it is, the README as it should be) of the chart folder (default: this repository's)."""
    chart = chart or CHART
    readme = (chart / "README.md").read_text()
    schema = json.loads((chart / "values.schema.json").read_text())
    return readme, render_readme(readme, values_table((chart / "values.yaml").read_text(), schema))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="only check that the README is current")
    args = parser.parse_args(argv)
    readme, wanted = current_readme(CHART)
    if readme == wanted:
        return 0
    if args.check:
        print("chart-readme: charts/datasurface/README.md is not current: run scripts/chart-readme.py",
              file=sys.stderr)
        return 1
    (CHART / "README.md").write_text(wanted)
    return 0


if __name__ == "__main__":
    sys.exit(main())
