"""A CSV of per-episode metrics that survives crashes and resumes.

One row per episode, so the file stays small: when a row brings a column never seen before, the
whole file is rewritten (atomically) with the widened header, and older rows get empty cells there.
Every row is flushed as it is appended. Reopening an existing CSV continues it; a last line torn by
a crash (no newline at its end) is dropped, since its values cannot be trusted. A run resumed from a
checkpoint drops the rows of the episodes it will run again (`drop_after`), so none appears twice.

Values are int, float or str; bools are written as 0/1 so that success rates average directly.
Reading gives back int where the cell is an integer, float where it is a number, str otherwise, and
leaves out empty cells.
"""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path

Value = float | int | str


class MetricsLog:
    """Appends rows to the CSV at `path`; rows already there (a resumed run) are kept."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.columns: list[str] = []
        self._rows: list[dict[str, str]] = []  # as written, so a rewrite reproduces old cells exactly
        if self.path.exists():
            self._load()

    @property
    def rows(self) -> list[dict[str, Value]]:
        """The rows so far, parsed as `read_metrics` would."""
        return [_parse_row(row) for row in self._rows]

    def append(self, row: dict[str, Value]) -> None:
        """Add one row and flush it; new keys extend the header (which rewrites the file)."""
        cells = {key: _format(key, value, self.path) for key, value in row.items()}
        new = [key for key in cells if key not in self.columns]
        self._rows.append(cells)
        if new or not self.path.exists():
            self.columns.extend(new)
            self._rewrite()
            return
        with self.path.open("a", newline="") as file:
            csv.DictWriter(file, self.columns).writerow(cells)
            file.flush()

    def drop_after(self, column: str, last: int) -> int:
        """Remove the rows whose numeric `column` is above `last` (rewriting the file); how many went."""
        kept = [row for row in self._rows if column not in row or self._number(row, column) <= last]
        dropped = len(self._rows) - len(kept)
        if dropped:
            self._rows = kept
            self._rewrite()
        return dropped

    def _number(self, row: dict[str, str], column: str) -> float:
        value = _parse(row[column])
        if isinstance(value, str):
            raise ValueError(f"{self.path}: column {column!r} holds {value!r}, not a number")
        return value

    def _load(self) -> None:
        text = self.path.read_text()
        if text and not text.endswith("\n"):
            text = text[: text.rfind("\n") + 1]  # a crash tore the last line: drop it
            torn = True
        else:
            torn = False
        reader = csv.DictReader(io.StringIO(text))
        self.columns = list(reader.fieldnames or [])
        if len(set(self.columns)) != len(self.columns) or "" in self.columns:
            raise ValueError(f"{self.path}: the CSV header {self.columns} has empty or repeated column names")
        for line, row in enumerate(reader, start=2):
            if None in row:
                raise ValueError(f"{self.path}: line {line} has more cells than the header has columns")
            self._rows.append({k: v for k, v in row.items() if v not in (None, "")})
        if torn:
            self._rewrite()

    def _rewrite(self) -> None:
        """Write header and every row to a temp file and rename it over the CSV."""
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with tmp.open("w", newline="") as file:
            writer = csv.DictWriter(file, self.columns)
            writer.writeheader()
            writer.writerows(self._rows)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, self.path)


def read_metrics(path: str | Path) -> list[dict[str, Value]]:
    """The rows of a metrics CSV, values parsed to int/float/str, empty cells left out."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"metrics file not found: {path}")
    with path.open(newline="") as file:
        return [_parse_row(row) for row in csv.DictReader(file) if row]


def _format(key: str, value: Value, path: Path) -> str:
    if not isinstance(key, str) or not key:
        raise ValueError(f"{path}: metric names must be non-empty str, got {key!r}")
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, int | float | str):
        return str(value)  # str(float) is its repr: it reads back as the same float
    # numpy scalars and 0-d tensors: their item() is a plain number
    item = getattr(value, "item", None)
    if callable(item):
        return _format(key, item(), path)
    raise TypeError(f"{path}: metric {key!r} is a {type(value).__name__}; expected int, float or str")


def _parse_row(row: dict[str, str | None]) -> dict[str, Value]:
    return {key: _parse(cell) for key, cell in row.items() if key is not None and cell not in (None, "")}


def _parse(cell: str) -> Value:
    for kind in (int, float):
        try:
            return kind(cell)
        except ValueError:
            continue
    return cell
