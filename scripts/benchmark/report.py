"""One benchmark row (`Result`), its table (plain and Markdown) and the size notation (1k, 10m)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

COLUMNS = ["shape", "rows", "churn", "mode", "batch", "floor s", "job s", "ratio", "floor+w s", "ratio w",
           "rows/s", "peak RSS MB", "changes", "check"]
WIDTHS = [6, 5, 6, 8, 5, 7, 7, 6, 9, 7, 10, 11, 9, 5]


def parse_size(text: str) -> int:
    """`1k` -> 1000, `1.5m` -> 1500000, `2_000` -> 2000."""
    cleaned = text.strip().lower().replace("_", "")
    multiplier = {"k": 1_000, "m": 1_000_000}.get(cleaned[-1:], 1)
    return int(float(cleaned[:-1] if multiplier > 1 else cleaned) * multiplier)


def human(count: int) -> str:
    if count >= 1_000_000 and count % 1_000_000 == 0:
        return f"{count // 1_000_000}M"
    if count >= 1_000 and count % 1_000 == 0:
        return f"{count // 1_000}k"
    return str(count)


def churn_label(fraction: float | None) -> str:
    return "load" if fraction is None else f"{fraction * 100:g}%"


@dataclass
class Result:
    shape: str
    nominal: int
    size: int
    churn: str
    mode: str
    batch: int
    floor_s: float
    job_s: float
    rss_mb: float
    changes: int
    check: str = "ok"
    shown: bool = True
    floor_w_s: float = float("nan")  # COPY + diff + the minimal writes
    # figures beside the row: --history's sizes and as-of queries, --cdc's floor parts and profile phases
    table: dict[str, Any] = field(default_factory=dict)

    @property
    def ratio(self) -> float:
        return self.job_s / self.floor_s if self.floor_s else float("nan")

    @property
    def ratio_w(self) -> float:
        return self.job_s / self.floor_w_s if self.floor_w_s else float("nan")

    @property
    def rows_per_s(self) -> float:
        return self.size / self.job_s if self.job_s else float("nan")


def number_cell(value: float) -> str:
    return "-" if value != value else f"{value:.2f}"  # NaN: no floor for the initial load


def row_cells(result: Result) -> list[str]:
    return [result.shape, human(result.nominal), result.churn, result.mode, str(result.batch),
            number_cell(result.floor_s), f"{result.job_s:.2f}", number_cell(result.ratio),
            number_cell(result.floor_w_s), number_cell(result.ratio_w), f"{result.rows_per_s:,.0f}",
            f"{result.rss_mb:.0f}", f"{result.changes:,}", result.check]


def markdown_table(results: list[Result]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "|".join("---" for _ in COLUMNS) + "|"]
    lines += ["| " + " | ".join(row_cells(result)) + " |" for result in results]
    return "\n".join(lines)


def plain_row(cells: list[str]) -> str:
    return "  ".join(cell.rjust(width) for cell, width in zip(cells, WIDTHS, strict=True))


def emit(result: Result) -> None:
    """Print one row of the plain table as soon as it is measured."""
    print(plain_row(row_cells(result)), flush=True)
