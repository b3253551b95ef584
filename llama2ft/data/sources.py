"""One data file -> the items the templates render, whatever its type and shape: a community-format cell
(a csv's text column, or a `{"text": ...}` object: rendered through the fast cell path), a `Dialogue`
(ShareGPT, OpenAI chat, Alpaca rows) or a plain text (data.format=raw), each with its row number, where
it is in the file ("row 3", "line 7") and whether it is usable."""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any, NamedTuple, Optional

from llama2ft.core.errors import DataError
from llama2ft.data.csv_reader import iter_column, read_header
from llama2ft.data.dialogue import DialogueFormatError, is_canonical, parse_dialogue
from llama2ft.data.records import file_kind, scan_records
from llama2ft.data.shapes import detect_shape, shape_problem, to_dialogue

# the status of a row: unusable, a cell written exactly as format_dialogue writes it, or otherwise usable
BAD, CANONICAL, VALID = 0, 1, 2
_RECORD_SHAPES = ("sharegpt", "openai", "alpaca")


class Item(NamedTuple):  # a tuple: made for every row of every pass
    row: int  # 1, 2, ... in file order
    where: str  # for messages: "row 3" (csv, parquet, dataset folders, json arrays) or "line 7" (jsonl)
    status: Optional[int]  # BAD, CANONICAL or VALID (None when not checked)
    value: Any  # str (a community cell or a raw text) or Dialogue; None when BAD
    problem: Optional[str] = None


def check_cell(cell: str, raw: bool) -> tuple[int, Optional[str]]:
    """(status, problem) of one text cell, checked as data.format says."""
    if raw:
        return (CANONICAL, None) if cell.strip() else (BAD, "empty cell")
    if is_canonical(cell):  # the common case: valid, checked without building turns
        return CANONICAL, None
    try:
        parse_dialogue(cell)
        return VALID, None
    except DialogueFormatError as exc:
        return BAD, str(exc)


def reads_cells(path: str, data: Any) -> bool:
    """Whether a file is read as a csv's text column (the community format's fast path)."""
    if file_kind(path) != "csv":
        return False
    if data.format in _RECORD_SHAPES:
        return False
    if data.format != "dialogue":
        return True
    header = read_header(path, data.encoding)  # an Alpaca csv: instruction/input/output columns, no text
    return data.text_column in header or not {"instruction", "output"} <= set(header)


def iter_items(path: str, data: Any, check: bool = True) -> Iterator[Item]:
    """Every row of a data file (`data`: the data config node: format, text_column, encoding). With
    `check=False` csv cells are yielded unchecked (status None), for a second pass over a checked file."""
    raw = data.format == "raw"
    if reads_cells(path, data):
        for row, cell in iter_column(path, data.text_column, data.encoding):
            status, problem = check_cell(cell, raw) if check else (None, None)
            yield Item(row, f"row {row}", status, cell if problem is None else None, problem)
        return
    for record in scan_records(path, data.encoding):
        if record.problem is not None:
            yield Item(record.number, record.where, BAD, None, record.problem)
            continue
        status, value, problem = _convert(record.fields, data.format, data.text_column, raw)
        yield Item(record.number, record.where, status, value, problem)


def _convert(fields: dict, forced: str, text_column: str, raw: bool) -> tuple[int, Any, Optional[str]]:
    shape = "community" if raw else (detect_shape(fields, text_column) if forced == "dialogue" else forced)
    if shape is None:
        return BAD, None, shape_problem(fields, text_column)
    if shape == "community":
        cell = fields.get(text_column)
        if not isinstance(cell, str):
            what = "no" if text_column not in fields else f"a non-text ({type(cell).__name__})"
            return BAD, None, f"{what} {text_column!r} field (set data.text_column=... to the field with the text)"
        status, problem = check_cell(cell, raw)
        return status, cell if problem is None else None, problem
    try:
        return VALID, to_dialogue(fields, shape), None
    except DialogueFormatError as exc:
        return BAD, None, str(exc)


def read_items(path: str, data: Any) -> tuple[list[tuple[int, Any]], list[tuple[int, str]]]:
    """A whole (small) file read into (row, dialogue or text) items and (row, problem) skipped rows;
    the first bad row raises unless data.skip_bad_rows. Cells are parsed into turns."""
    items, skipped = [], []
    for item in iter_items(path, data):
        if item.status == BAD:
            if not data.skip_bad_rows:
                raise bad_row(path, item)
            skipped.append((item.row, item.problem))
        elif isinstance(item.value, str) and data.format != "raw":
            items.append((item.row, parse_dialogue(item.value)))
        else:
            items.append((item.row, item.value))
    return items, skipped


def bad_row(path: str, item: Item) -> DataError:
    """The one-line error of an unusable row."""
    hint = " (set data.skip_bad_rows=true to skip such rows)" if item.problem == "empty cell" else ""
    return DataError(f"{path} {item.where}: {item.problem}{hint}")
