"""Reading a data file into parsed rows: dialogues (`data.format=dialogue`) or plain texts (`raw`),
every bad row reported with file and row number (or skipped and counted), and the held-out split."""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any, Optional

from llama2ft.core.errors import DataError
from llama2ft.data.csv_reader import read_column
from llama2ft.data.dialogue import parse_rows


@dataclass
class Rows:
    """Rows of one csv, parsed: dialogues (`format=dialogue`) or plain texts (`format=raw`)."""

    path: str
    items: list[tuple[int, Any]]  # (row number, list[Turn] or str)
    skipped: list[tuple[int, str]] = field(default_factory=list)


def read_rows(path: str, data: Any) -> Rows:
    """Read and check one csv completely (`data`: the data config node); bad rows raise, or are
    skipped with data.skip_bad_rows."""
    cells = read_column(path, data.text_column, data.encoding)
    if data.format == "raw":
        items, skipped = [], []
        for number, text in cells:
            if text.strip():
                items.append((number, text))
            elif data.skip_bad_rows:
                skipped.append((number, "empty cell"))
            else:
                raise DataError(f"{path} row {number}: empty cell (set data.skip_bad_rows=true to skip such rows)")
        return Rows(path, items, skipped)
    parsed, skipped = parse_rows(cells, path, data.skip_bad_rows)
    if not parsed:
        raise DataError(f"{path}: no usable rows ({len(skipped)} skipped as malformed)")
    return Rows(path, parsed, skipped)


def split_rows(rows: Rows, fraction: float, seed: int) -> tuple[Rows, Optional[Rows]]:
    """Hold out a seeded random `fraction` of rows for evaluation (at least one when fraction > 0)."""
    if fraction <= 0 or len(rows.items) < 2:
        return rows, None
    order = list(range(len(rows.items)))
    random.Random(seed).shuffle(order)
    n_eval = max(1, round(len(order) * fraction))
    held = set(order[:n_eval])
    train = [it for i, it in enumerate(rows.items) if i not in held]
    evals = [it for i, it in enumerate(rows.items) if i in held]
    return Rows(rows.path, train, rows.skipped), Rows(rows.path, evals)
