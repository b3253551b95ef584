"""read_column: encodings, structure errors and messages that name the file and row/line."""
from __future__ import annotations

import csv
import io
from pathlib import Path

import pytest

from llama2ft.data.csv_reader import read_column
from llama2ft.core.errors import DataError, UserError

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
DIALOGUE = "<s>Human: 你好，介绍一下地球。\n</s><s>Assistant: 地球是太阳系的第三颗行星。\n</s>"


def _csv(rows: list[list[str]]) -> str:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(rows)
    return buf.getvalue()


def _write(tmp_path: Path, content: str | bytes, name: str = "train.csv", encoding: str = "utf-8") -> Path:
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode(encoding))
    return path


def _error(path: Path, **kwargs) -> str:
    with pytest.raises(DataError) as info:
        read_column(path, **kwargs)
    message = str(info.value)
    assert str(path) in message
    return message


def test_utf8_rows_are_numbered_from_1_after_the_header(tmp_path):
    path = _write(tmp_path, _csv([["text"], [DIALOGUE], ["second, with \"quotes\"\nand lines"]]))
    assert read_column(path) == [(1, DIALOGUE), (2, 'second, with "quotes"\nand lines')]
    assert read_column(str(path)) == read_column(path)


def test_bom_is_stripped_from_the_header(tmp_path):
    path = _write(tmp_path, "\ufeff" + _csv([["text", "id"], [DIALOGUE, "1"]]))
    assert read_column(path) == [(1, DIALOGUE)]
    assert read_column(path, encoding="utf-8") == [(1, DIALOGUE)]  # explicit utf-8 accepts a BOM too


def test_extra_columns_and_column_choice(tmp_path):
    path = _write(tmp_path, _csv([["id", "text", "source"], ["1", "a", "x"], ["2", "b", "y"]]))
    assert read_column(path) == [(1, "a"), (2, "b")]
    assert read_column(path, column="source") == [(1, "x"), (2, "y")]


def test_short_rows_give_an_empty_cell_and_blank_lines_are_skipped(tmp_path):
    path = _write(tmp_path, "id,text\n1,a\n\n2\n3,c,extra\n")
    assert read_column(path) == [(1, "a"), (2, ""), (3, "c")]


def test_crlf_line_endings(tmp_path):
    path = _write(tmp_path, 'text\r\n"a\r\nb"\r\nc\r\n')
    assert read_column(path) == [(1, "a\r\nb"), (2, "c")]


def test_cell_longer_than_the_default_csv_field_limit(tmp_path):
    big = "<s>Human: " + "长" * 300_001 + "\n</s><s>Assistant: ok\n</s>"
    path = _write(tmp_path, _csv([["text"], [big], ["x"]]))
    assert read_column(path) == [(1, big), (2, "x")]


def test_gbk_file_is_detected_and_readable_with_encoding(tmp_path):
    path = _write(tmp_path, _csv([["text"], [DIALOGUE]]), encoding="gbk")
    message = _error(path)
    assert "not UTF-8" in message and "data.encoding=gbk" in message
    assert read_column(path, encoding="gbk") == [(1, DIALOGUE)]
    assert read_column(path, encoding="GB18030") == [(1, DIALOGUE)]


def test_non_utf8_latin_text_is_not_called_gbk(tmp_path):
    path = _write(tmp_path, "text\ncafé crème\n", encoding="latin-1")
    message = _error(path)
    assert "is not UTF-8 (undecodable byte 0xe9 at line 2)" in message and "latin-1" in message
    assert "data.encoding=gbk" not in message
    assert read_column(path, encoding="latin-1") == [(1, "café crème")]


def test_wrong_explicit_encoding(tmp_path):
    path = _write(tmp_path, "text\nok\n你好\n")
    message = _error(path, encoding="ascii")
    assert "not valid ascii text (undecodable byte 0xe4 at line 3)" in message


def test_utf16_file_gets_a_hint(tmp_path):
    path = _write(tmp_path, "\ufefftext\nhello\n", encoding="utf-16-le")
    assert "data.encoding=utf-16" in _error(path)
    assert read_column(path, encoding="utf-16") == [(1, "hello")]


@pytest.mark.parametrize(
    "content",
    [b"PK\x03\x04\x14\x00\x00\x00\x08\x00binary", bytes(range(1, 256)) * 4],
    ids=["nul-bytes", "control-bytes"],
)
def test_binary_file(tmp_path, content):
    assert "is not a text csv" in _error(_write(tmp_path, content, name="data.xlsx"))


def test_missing_file(tmp_path):
    message = _error(tmp_path / "nope.csv")
    assert "does not exist" in message


def test_directory(tmp_path):
    assert "is a directory" in _error(tmp_path)


@pytest.mark.parametrize("content", ["", "\ufeff", "\n\n  \n"], ids=["empty", "bom-only", "blank-lines"])
def test_empty_file(tmp_path, content):
    assert "is empty" in _error(_write(tmp_path, content))


def test_header_only(tmp_path):
    assert "no data rows" in _error(_write(tmp_path, "text\n"))


def test_missing_column_lists_the_columns_found(tmp_path):
    path = _write(tmp_path, "question,answer\nq,a\n")
    message = _error(path)
    assert f"{path} has no column 'text'; columns found: 'question', 'answer'" in message
    assert "data.text_column" in message


def test_duplicate_column(tmp_path):
    assert "2 columns named 'text'" in _error(_write(tmp_path, "text,text\na,b\n"))


def test_unterminated_quote_names_the_line_where_the_record_starts(tmp_path):
    path = _write(tmp_path, 'text\nok\n"never closed\nmore\nlines\n')
    message = _error(path)
    assert f"{path} line 3 (row 2): malformed csv" in message and "never closed" in message


def test_garbage_after_closing_quote_names_the_line(tmp_path):
    path = _write(tmp_path, 'text\nok\n"multi\nline"x\n')
    message = _error(path)
    assert f"{path} line 4 (row 2): malformed csv" in message


def test_unknown_encoding_names_the_value(tmp_path):
    path = _write(tmp_path, "text\na\n")
    assert "unknown encoding 'utf-99'" in _error(path, encoding="utf-99")
    assert "'base64' is not a text encoding" in _error(path, encoding="base64")


def test_errors_are_user_errors(tmp_path):
    assert issubclass(DataError, UserError)


@pytest.mark.parametrize("name", ["dev_sft.csv", "dev_sft_sharegpt.csv"])
def test_real_data(name):
    path = SHARED_DATA / name
    if not path.is_file():
        pytest.skip(f"real sample data not available at {path}")
    rows = read_column(path)
    assert [n for n, _ in rows] == list(range(1, 201))
    assert all(cell.startswith("<s>Human:") for _, cell in rows)
