"""Reading a small data file into parsed rows held in memory (evaluation files, the sample eval):
dialogues (`data.format=dialogue`) or plain texts (`raw`), every bad row reported with file and row
number (or skipped and counted). Training data goes through the streaming `pipeline` instead."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

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
