"""Rows of any supported data file as plain dicts (records), each with where it came from, so that every
problem can name the file and the line or row: `.jsonl` (one object a line), `.json` (an array of
objects), `.parquet`, a folder written by `datasets.Dataset.save_to_disk`, and `.csv` (the header's
columns). Streamed where the format allows (jsonl, csv, parquet, dataset folders); a `.json` array is
read whole. Used by the training data step (`sources`) and by anything else that reads columns of
its own (e.g. prompt/chosen/rejected) from the same file types.
"""
from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from llama2ft.core.errors import DataError
from llama2ft.data.csv_reader import iter_dicts

FILE_KINDS = ("csv", "jsonl", "json", "parquet", "dataset")
_SUFFIXES = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".parquet": "parquet"}
_BATCH = 1000  # rows converted to Python objects at a time (parquet, dataset folders)
_SEPARATOR = re.compile(r"\s*,?\s*")


@dataclass(frozen=True)
class Record:
    """One row: `number` counts rows from 1 in file order; `where` is "line 7" (jsonl) or "row 3";
    `fields` is None when the row could not be read, and `problem` says why."""

    path: str
    number: int
    where: str
    fields: Optional[dict[str, Any]]
    problem: Optional[str] = None

    def error(self, problem: str) -> DataError:
        """The one-line error of a problem with this row: `FILE line 7: PROBLEM`."""
        return DataError(f"{self.path} {self.where}: {problem}")


def file_kind(path: str | os.PathLike[str]) -> str:
    """The reader a path needs (one of FILE_KINDS); DataError for a missing path or unknown suffix."""
    p = Path(path)
    if p.is_dir():
        if (p / "dataset_dict.json").is_file():
            splits = sorted(q.name for q in p.iterdir() if q.is_dir())
            raise DataError(f"{path} holds a DatasetDict (splits: {', '.join(splits)}); point the data file at one "
                            f"split's folder, e.g. {p / (splits[0] if splits else 'train')}")
        if not (p / "state.json").is_file():
            raise DataError(f"{path} is a folder but not one written by datasets' save_to_disk (no state.json)")
        return "dataset"
    if not p.is_file():
        raise DataError(f"{path} does not exist; check the data file path")
    kind = _SUFFIXES.get(p.suffix.lower())
    if kind is None:
        raise DataError(f"{path}: unknown file type {p.suffix or '(no suffix)'!r}; use .csv, .jsonl, .json, "
                        ".parquet or a datasets save_to_disk folder")
    return kind


def iter_records(path: str | os.PathLike[str], encoding: Optional[str] = None) -> Iterator[Record]:
    """The rows of a data file as dicts; the first unreadable row raises DataError naming file and line."""
    for record in scan_records(path, encoding):
        if record.problem is not None:
            raise record.error(record.problem)
        yield record


def scan_records(path: str | os.PathLike[str], encoding: Optional[str] = None) -> Iterator[Record]:
    """`iter_records` that yields the rows it cannot read (a malformed JSON line, a value that is not an
    object) with their problem instead of raising, so that a caller can skip them; problems of the file
    as a whole (missing, undecodable, not an array) still raise."""
    shown = os.fspath(path)
    kind = file_kind(shown)
    if kind == "csv":
        yield from _csv(shown, encoding)
    elif kind == "jsonl":
        yield from _jsonl(shown, encoding)
    elif kind == "json":
        yield from _json(shown, encoding)
    elif kind == "parquet":
        yield from _parquet(shown)
    else:
        yield from _dataset(shown)


def _csv(path: str, encoding: Optional[str]) -> Iterator[Record]:
    for number, fields in iter_dicts(path, encoding):
        yield Record(path, number, f"row {number}", fields)


def _text_lines(path: str, encoding: Optional[str]) -> Iterator[tuple[int, str]]:
    try:
        with open(path, encoding=encoding or "utf-8-sig") as f:
            yield from enumerate(f, 1)
    except UnicodeDecodeError as exc:
        raise DataError(f"{path} is not valid {encoding or 'UTF-8'} text ({exc.reason} at byte {exc.start} of a "
                        "line); set data.encoding to its encoding or convert it to UTF-8") from None
    except LookupError:
        raise DataError(f"unknown encoding {encoding!r} for {path} (data.encoding)") from None


def _jsonl(path: str, encoding: Optional[str]) -> Iterator[Record]:
    number = 0
    for line_no, line in _text_lines(path, encoding):
        if not line.strip():
            continue
        number += 1
        where = f"line {line_no}"
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            yield Record(path, number, where, None, f"malformed JSON ({exc.msg} at column {exc.colno})")
            continue
        yield _record(path, number, where, value)
    if not number:
        raise DataError(f"{path} is empty; expected one JSON object per line")


def _json(path: str, encoding: Optional[str]) -> Iterator[Record]:
    text = "".join(line for _, line in _text_lines(path, encoding))
    start = len(text) - len(text.lstrip())
    if start == len(text):
        raise DataError(f"{path} is empty; expected a JSON array of objects")
    if text[start] == "{":  # many ".json" files are JSON lines; a single object is a mistake
        if "\n" in text.strip() and _looks_like_lines(text):
            yield from _jsonl(path, encoding)
            return
        raise DataError(f"{path}: the file is one JSON object; expected an array of objects [{{...}}, ...] "
                        "or one object per line (.jsonl)")
    if text[start] != "[":
        raise DataError(f"{path}: expected a JSON array of objects, found {text[start:start + 20]!r}")
    decoder, pos, number = json.JSONDecoder(), start + 1, 0
    pos = _SEPARATOR.match(text, pos).end()  # type: ignore[union-attr]
    line, counted = 1, 0
    while pos < len(text) and text[pos] != "]":
        number += 1
        line, counted = line + text.count("\n", counted, pos), pos
        try:
            value, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as exc:  # the rest cannot be read: the error is the file's
            raise DataError(f"{path} line {exc.lineno}: malformed JSON ({exc.msg} at column {exc.colno})") from None
        yield _record(path, number, f"row {number} (line {line})", value)
        pos = _SEPARATOR.match(text, pos).end()  # type: ignore[union-attr]
    if pos >= len(text):
        raise DataError(f"{path} line {text.count(chr(10)) + 1}: malformed JSON (the array is never closed with ])")
    if not number:
        raise DataError(f"{path} is an empty array; expected objects in it")


def _looks_like_lines(text: str) -> bool:
    first = text.strip().split("\n", 1)[0]
    try:
        return isinstance(json.loads(first), dict)
    except json.JSONDecodeError:
        return False


def _record(path: str, number: int, where: str, value: Any) -> Record:
    if not isinstance(value, dict):
        return Record(path, number, where, None, f"expected a JSON object {{...}}, found {type(value).__name__}")
    return Record(path, number, where, value)


def _parquet(path: str) -> Iterator[Record]:
    import pyarrow.parquet as pq

    try:
        table = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow says what is wrong with the bytes
        raise DataError(f"{path} cannot be read as parquet: {exc}") from None
    yield from _batches(path, (b.to_pylist() for b in table.iter_batches(batch_size=_BATCH)), "parquet")


def _dataset(path: str) -> Iterator[Record]:
    from datasets import load_from_disk

    try:
        ds = load_from_disk(path)
    except Exception as exc:
        raise DataError(f"{path} cannot be read as a datasets folder: {exc}") from None
    if not hasattr(ds, "iter"):
        raise DataError(f"{path} holds a DatasetDict; point the data file at one split's folder")
    batches = ({k: v[i] for k, v in batch.items()} for batch in ds.iter(batch_size=_BATCH)
               for i in range(len(next(iter(batch.values()), []))))
    yield from _batches(path, ([row] for row in batches), "dataset folder")


def _batches(path: str, batches: Iterator[list[dict]], what: str) -> Iterator[Record]:
    number = 0
    for rows in batches:
        for row in rows:
            number += 1
            yield Record(path, number, f"row {number}", row)
    if not number:
        raise DataError(f"{path}: the {what} has no rows")
