"""Read columns of a user's csv file, with clear errors for the usual mistakes.

Pure stdlib so it can run (and fail fast) before any model is loaded.
"""
from __future__ import annotations

import codecs
import csv
import io
import os
import sys
from collections.abc import Iterator
from pathlib import Path

from llama2ft.core.errors import DataError
from llama2ft.core.text import CJK_CHAR

# Dialogue cells (e.g. ShareGPT conversations) can exceed csv's default 128 KiB field limit.
# The limit is process-global; 2**31-1 is the largest value every platform's C long accepts.
_FIELD_SIZE_LIMIT = min(sys.maxsize, 2**31 - 1)

# C0 control bytes (and DEL) other than tab, newlines, form feed and escape.
_TEXT_CONTROLS = bytes(b for b in (*range(0x20), 0x7F) if b not in b"\t\n\r\x0c\x1b")
_QUOTING_HINT = (
    'fields containing commas, quotes or line breaks must be enclosed in "...", '
    'with any " inside them doubled ("")'
)


def read_column(
    path: str | os.PathLike[str], column: str = "text", encoding: str | None = None
) -> list[tuple[int, str]]:
    """Return ``(row_number, cell)`` for every data row of ``column`` in the csv at ``path``.

    Row numbers are 1-based and count data rows only: the header is not a row, so row 1 is
    the first record after the header (pandas ``df.iloc[0]``). Blank lines are skipped and
    not counted. A row with too few fields to reach ``column`` yields an empty cell (the
    caller decides whether that is an error); extra fields are ignored.

    ``encoding=None`` means UTF-8 with an optional BOM; otherwise any Python codec name.
    Raises DataError naming the path (and row/line) for anything unusable.
    """
    shown = os.fspath(path)
    header, rows = _header_and_rows(shown, encoding, f"containing a {column!r} column")
    index = _column_index(shown, header, column)
    return _some(shown, [(n, fields[index] if index < len(fields) else "") for n, fields in rows])


def read_columns(
    path: str | os.PathLike[str],
    required: tuple[str, ...],
    optional: tuple[str, ...] = (),
    encoding: str | None = None,
) -> list[tuple[int, dict[str, str]]]:
    """Like `read_column`, for several columns: ``(row_number, {name: cell})`` per data row.

    Every ``required`` column must be in the header; an ``optional`` column that is absent is
    left out of the dicts (present but short rows give ""). Same decoding and errors as `read_column`.
    """
    shown = os.fspath(path)
    header, rows = _header_and_rows(shown, encoding, f"naming the columns {_names(required)}")
    names = [name.strip() for name in header]
    missing = [c for c in required if c not in names]
    if missing:
        found = ", ".join(repr(name) for name in header)
        raise DataError(f"{shown} has no column {_names(missing)}; columns found: {found}")
    indices = {c: _column_index(shown, header, c) for c in (*required, *optional) if c in names}

    return _some(shown, [(n, {c: fields[i] if i < len(fields) else "" for c, i in indices.items()})
                         for n, fields in rows])


def read_lines_or_column(path: str | os.PathLike[str], column: str = "text", encoding: str | None = None,
               column_key: str = "column") -> list[str]:
    """The non-blank cells of `column` of a .csv, or the non-blank lines of any other text file.
    `column_key` is the setting that names the column, for error messages."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise DataError(f"{path}: file not found")
    if p.suffix.lower() == ".csv":
        try:
            texts = [cell for _, cell in read_column(str(p), column, encoding)]
        except DataError as exc:  # the column error names the training key; here it is `column_key`
            raise DataError(str(exc).replace("data.text_column=", f"{column_key}=")) from None
    else:
        try:
            texts = p.read_text(encoding=encoding or "utf-8-sig").splitlines()
        except (UnicodeDecodeError, LookupError) as exc:
            raise DataError(f"{path}: cannot be read as {encoding or 'UTF-8'} text ({exc}); set encoding=...") from None
    return [t for t in texts if t.strip()]


def read_header(path: str | os.PathLike[str], encoding: str | None = None) -> list[str]:
    """The column names of the csv at ``path`` (decoded as `read_column` does)."""
    shown = os.fspath(path)
    header, _ = _header_and_rows(shown, encoding, "")
    return [name.strip() for name in header]


def _header_and_rows(shown: str, encoding: str | None, expected: str) -> tuple[list[str], Iterator[tuple[int, list[str]]]]:
    """The header and an iterator over the data rows; an empty file is a DataError (`expected` says why)."""
    text = _decode(shown, _read_bytes(shown), encoding)
    if not text.strip():
        raise DataError(f"{shown} is empty; expected a csv with a header row {expected}".rstrip())
    rows = _rows(shown, text)
    _, header = next(rows)  # exists: the text is not blank
    return header, rows


def _some(shown: str, out: list) -> list:
    if not out:
        raise DataError(f"{shown} has a header but no data rows")
    return out


def _names(columns: tuple[str, ...] | list[str]) -> str:
    return ", ".join(repr(c) for c in columns)


def _read_bytes(path: str) -> bytes:
    if os.path.isdir(path):
        raise DataError(f"{path} is a directory, not a csv file; set the path to a .csv file")
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise DataError(f"{path} does not exist; check the data file path") from None
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror or exc}") from None


def _decode(path: str, raw: bytes, encoding: str | None) -> str:
    """Decode the whole file, explaining wrong encodings and binary files."""
    if encoding is None:
        text = _decode_default(path, raw)
    else:
        try:
            codec = codecs.lookup(encoding).name
        except LookupError:
            raise DataError(
                f"unknown encoding {encoding!r} for {path} (data.encoding); "
                "use a Python codec name such as utf-8 or gbk"
            ) from None
        # An explicit utf-8 must still accept the BOM that Excel writes.
        codec = "utf-8-sig" if codec == "utf-8" else codec
        try:
            text = raw.decode(codec)
        except LookupError:  # e.g. "base64": a codec, but not a text encoding
            raise DataError(f"{encoding!r} is not a text encoding (data.encoding for {path})") from None
        except UnicodeDecodeError as exc:
            raise DataError(
                f"{path} is not valid {encoding} text (undecodable byte 0x{raw[exc.start]:02x} "
                f"at line {_line_of(raw, exc.start)}); set data.encoding to the file's real encoding "
                "or convert it to UTF-8"
            ) from None
    if "\x00" in text:
        raise DataError(_binary_message(path))
    # Some codecs (e.g. gb18030, utf-16 without its BOM stripped) leave a BOM character.
    return text[1:] if text.startswith("\ufeff") else text


def _decode_default(path: str, raw: bytes) -> str:
    """UTF-8 (BOM optional); otherwise say which encoding the file most likely has."""
    if raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        raise DataError(f"{path} is not UTF-8; it looks UTF-16-encoded: set data.encoding=utf-16 (or convert it to UTF-8)")
    if b"\x00" in raw:
        raise DataError(_binary_message(path))
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        where = f"undecodable byte 0x{raw[exc.start]:02x} at line {_line_of(raw, exc.start)}"
    # Text in any common encoding has (almost) no C0 control bytes; binary data has plenty.
    if len(raw.translate(None, _TEXT_CONTROLS)) < len(raw) * 0.99:
        raise DataError(
            f"{path} is not a text csv: it is not UTF-8 ({where}) and is full of control bytes; "
            "is it a binary file? export it as a UTF-8 csv"
        )
    # Chinese users' files are often GBK (Excel/WPS on Chinese Windows). Require CJK text so a
    # Latin-1 file whose bytes happen to pair up as GBK is not misreported.
    for codec in ("gbk", "gb18030"):
        try:
            guess = raw.decode(codec)
        except UnicodeDecodeError:
            continue
        if CJK_CHAR.search(guess):
            raise DataError(
                f"{path} is not UTF-8; it looks {codec.upper()}-encoded: "
                f"set data.encoding={codec} (or convert it to UTF-8)"
            )
    raise DataError(
        f"{path} is not UTF-8 ({where}) and does not look GBK-encoded; set data.encoding to its "
        "encoding (e.g. latin-1, cp1252) or convert it to UTF-8"
    )


def _binary_message(path: str) -> str:
    return (
        f"{path} is not a text csv (it contains NUL bytes; is it a binary file such as .xlsx or "
        ".parquet?); export it as a UTF-8 csv"
    )


def _line_of(raw: bytes, offset: int) -> int:
    return raw.count(b"\n", 0, offset) + 1


def _rows(path: str, text: str) -> Iterator[tuple[int, list[str]]]:
    """Yield ``(row_number, fields)``, header as row 0, blank lines skipped; csv.Error -> DataError."""
    if csv.field_size_limit() < _FIELD_SIZE_LIMIT:
        csv.field_size_limit(_FIELD_SIZE_LIMIT)
    # newline="" keeps line breaks inside quoted cells intact, as the csv module requires.
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    n = 0
    while True:
        start_line = reader.line_num + 1  # the line the next record starts on
        try:
            fields = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            where = "the header" if n == 0 else f"row {n}"
            if "unexpected end of data" in str(exc):
                # Strict mode reports EOF inside quotes; the useful place is where the cell began.
                raise DataError(
                    f"{path} line {start_line} ({where}): malformed csv: a quoted field in the record starting here "
                    f"is never closed (unterminated \"); {_QUOTING_HINT}"
                ) from None
            raise DataError(
                f"{path} line {reader.line_num} ({where}): malformed csv: {exc}; {_QUOTING_HINT}"
            ) from None
        if not fields:  # a blank line
            continue
        yield n, fields
        n += 1


def _column_index(path: str, header: list[str], column: str) -> int:
    names = [name.strip() for name in header]
    matches = [i for i, name in enumerate(names) if name == column.strip()]
    if len(matches) > 1:
        raise DataError(f"{path} has {len(matches)} columns named {column!r}; rename all but one")
    if not matches:
        found = ", ".join(repr(name) for name in header)
        raise DataError(f"{path} has no column {column!r}; columns found: {found} (set data.text_column=...)")
    return matches[0]
