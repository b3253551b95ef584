"""Reading a small data file into parsed rows held in memory (evaluation files, the sample eval):
dialogues (`data.format=dialogue` or a forced shape) or plain texts (`raw`), from any file type the
training data step reads, every bad row reported with file and row or line (or skipped and counted).
Training data goes through the streaming `pipeline` instead."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from llama2ft.core.errors import DataError
from llama2ft.data.sources import read_items


@dataclass
class Rows:
    """Rows of one data file, parsed: dialogues (lists of turns) or plain texts (`format=raw`)."""

    path: str
    items: list[tuple[int, Any]]  # (row number, list[Turn] or str)
    skipped: list[tuple[int, str]] = field(default_factory=list)


def read_rows(path: str, data: Any) -> Rows:
    """Read and check one data file completely (`data`: the data config node); bad rows raise, or are
    skipped with data.skip_bad_rows."""
    items, skipped = read_items(path, data)
    if not items:
        raise DataError(f"{path}: no usable rows ({len(skipped)} skipped as malformed)")
    return Rows(path, items, skipped)
