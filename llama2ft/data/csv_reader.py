"""Read columns of a user's csv file, with clear errors for the usual mistakes.

The file is decoded as it is read (memory does not grow with its size); when decoding fails, the
whole file is examined once to say which encoding it most likely has. Pure stdlib so it can run
(and fail fast) before any model is loaded.
"""
from __future__ import annotations

import codecs
import csv
import itertools
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TextIO

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
    return list(iter_column(path, column, encoding))


def iter_column(
    path: str | os.PathLike[str], column: str = "text", encoding: str | None = None
) -> Iterator[tuple[int, str]]:
    """`read_column` one row at a time (for files too large to hold): same rows, same errors, the
    errors of a row raised when the reading reaches it."""
    shown = os.fspath(path)
    with _open_csv(shown, encoding, f"containing a {column!r} column") as (header, rows):
        index = _column_index(shown, header, column)
        count = 0
        for count, fields in rows:
            yield count, fields[index] if index < len(fields) else ""
        if not count:
            raise DataError(f"{shown} has a header but no data rows")


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
    with _open_csv(shown, encoding, f"naming the columns {_names(required)}") as (header, rows):
        names = [name.strip() for name in header]
        missing = [c for c in required if c not in names]
        if missing:
            found = ", ".join(repr(name) for name in header)
            raise DataError(f"{shown} has no column {_names(missing)}; columns found: {found}")
        indices = {c: _column_index(shown, header, c) for c in (*required, *optional) if c in names}
        out = [(n, {c: fields[i] if i < len(fields) else "" for c, i in indices.items()}) for n, fields in rows]
    if not out:
        raise DataError(f"{shown} has a header but no data rows")
    return out


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


def iter_dicts(path: str | os.PathLike[str], encoding: str | None = None) -> Iterator[tuple[int, dict[str, str]]]:
    """``(row_number, {column: cell})`` for every data row, every column of the header (short rows give "")."""
    shown = os.fspath(path)
    with _open_csv(shown, encoding, "") as (header, rows):
        names = [name.strip() for name in header]
        for n, fields in rows:
            yield n, {c: fields[i] if i < len(fields) else "" for i, c in enumerate(names)}


def read_header(path: str | os.PathLike[str], encoding: str | None = None) -> list[str]:
    """The column names of the csv at ``path`` (decoded as `read_column` does)."""
    shown = os.fspath(path)
    with _open_csv(shown, encoding, "") as (header, _):
        return [name.strip() for name in header]


@contextmanager
def _open_csv(shown: str, encoding: str | None, expected: str) -> Iterator[tuple[list[str], Iterator[tuple[int, list[str]]]]]:
    """The header and an iterator over the data rows of a csv decoded as it is read; an empty file
    is a DataError (`expected` says why), and so is anything that cannot be decoded."""
    codec = _text_codec(shown, encoding)
    try:
        f = open(shown, encoding=codec, newline="")  # newline="": line breaks inside quoted cells stay intact
    except OSError as exc:
        raise DataError(f"cannot read {shown}: {exc.strerror or exc}") from None
    with f:
        rows = _rows(shown, f, encoding)
        first = next(rows, None)
        second = next(rows, None) if first is not None and not "".join(first[1]).strip() else None
        if first is None or (second is None and not "".join(first[1]).strip()):  # nothing but whitespace
            raise DataError(f"{shown} is empty; expected a csv with a header row {expected}".rstrip())
        if second is not None:
            rows = itertools.chain([second], rows)
        header = first[1]
        if header and header[0].startswith("\ufeff"):  # some codecs (gb18030, utf-16 LE/BE) keep the BOM
            header[0] = header[0][1:]
        yield header, rows


def _text_codec(path: str, encoding: str | None) -> str:
    """The codec to read `path` with; the errors that show in its first bytes are raised here."""
    if os.path.isdir(path):
        raise DataError(f"{path} is a directory, not a csv file; set the path to a .csv file")
    try:
        with open(path, "rb") as f:
            head = f.read(1 << 16)
    except FileNotFoundError:
        raise DataError(f"{path} does not exist; check the data file path") from None
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror or exc}") from None
    if encoding is None:
        if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
            raise DataError(f"{path} is not UTF-8; it looks UTF-16-encoded: set data.encoding=utf-16 "
                            "(or convert it to UTF-8)")
        if b"\x00" in head:
            raise DataError(_binary_message(path))
        return "utf-8-sig"
    try:
        info = codecs.lookup(encoding)
    except LookupError:
        raise DataError(
            f"unknown encoding {encoding!r} for {path} (data.encoding); "
            "use a Python codec name such as utf-8 or gbk"
        ) from None
    if not getattr(info, "_is_text_encoding", True):  # e.g. "base64": a codec, but not a text encoding
        raise DataError(f"{encoding!r} is not a text encoding (data.encoding for {path})")
    # An explicit utf-8 must still accept the BOM that Excel writes.
    return "utf-8-sig" if info.name == "utf-8" else info.name


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


def _rows(path: str, f: TextIO, encoding: str | None) -> Iterator[tuple[int, list[str]]]:
    """Yield ``(row_number, fields)``, header as row 0, blank lines skipped; csv.Error, undecodable
    bytes and NUL characters -> DataError."""
    if csv.field_size_limit() < _FIELD_SIZE_LIMIT:
        csv.field_size_limit(_FIELD_SIZE_LIMIT)
    reader = csv.reader(f, strict=True)
    n = 0
    while True:
        start_line = reader.line_num + 1  # the line the next record starts on
        try:
            fields = next(reader)
        except StopIteration:
            return
        except UnicodeDecodeError:
            # rare and fatal: examine the whole file once to say precisely what is wrong with it
            _decode(path, _read_bytes(path), encoding)
            raise DataError(f"{path} line {start_line}: cannot be decoded as {encoding or 'UTF-8'}") from None
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
        if any("\x00" in field for field in fields):
            raise DataError(_binary_message(path))
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
