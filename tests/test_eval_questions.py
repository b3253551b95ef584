"""Question sets: the built-in set, AtomBulb JSON, csv, and one clear error for each bad input."""
from __future__ import annotations

import csv
import io
import json
from collections import Counter
from pathlib import Path

import pytest

from conftest import shared_file
from llama2ft.core.errors import DataError
from llama2ft.evaluation.questions import (
    BUILTIN_QUESTIONS,
    CLASS_NAMES_EN,
    CLASSES,
    COMMUNITY_SYSTEM_PROMPT,
    UNCATEGORIZED,
    Question,
    load_questions,
)


def _json(tmp_path: Path, data, name: str = "q.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    return path


def _csv(tmp_path: Path, rows: list[list[str]], name: str = "q.csv", encoding: str = "utf-8") -> Path:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(rows)
    path = tmp_path / name
    path.write_bytes(buf.getvalue().encode(encoding))
    return path


def _error(path, *, where: str = "") -> str:
    with pytest.raises(DataError) as info:
        load_questions(path)
    message = str(info.value)
    assert str(path) in message
    assert where in message
    return message


def test_builtin_set_covers_every_class():
    questions = load_questions(None)
    counts = Counter(q.category for q in questions)
    assert set(counts) == set(CLASSES)
    assert all(3 <= n <= 4 for n in counts.values())
    assert len({q.qid for q in questions}) == len(questions)
    assert all(q.subcategory and q.question.strip() and q.reference is None for q in questions)
    assert load_questions(BUILTIN_QUESTIONS) == questions
    assert set(CLASS_NAMES_EN) == {*CLASSES, UNCATEGORIZED}


def test_system_prompt_asks_for_chinese():
    assert "中文" in COMMUNITY_SYSTEM_PROMPT and "Chinese" in COMMUNITY_SYSTEM_PROMPT


def test_atombulb_json(tmp_path):
    path = _json(tmp_path, [
        {"qid": 117, "question": "为以下代码写注释。\ndef f(): pass", "first_level_class": "代码编程",
         "second_level_class": "代码解释"},
        {"qid": "a-2", "question": "1+1=?", "first_level_class": " 逻辑推理 ", "reference": "2"},
    ])
    assert load_questions(path) == [
        Question("117", "为以下代码写注释。\ndef f(): pass", "代码编程", "代码解释", None),
        Question("a-2", "1+1=?", "逻辑推理", None, "2"),
    ]
    assert load_questions(str(path)) == load_questions(path)


def test_json_object_with_one_list_inside(tmp_path):
    items = [{"qid": 1, "question": "你好", "first_level_class": "人格特征"}]
    path = _json(tmp_path, {"name": "mine", "questions": items})
    assert load_questions(path) == [Question("1", "你好", "人格特征")]


def test_real_atombulb_files():
    eval95 = load_questions(shared_file("atombulb/eval95_questions.json"))
    assert len(eval95) == 95
    assert set(q.category for q in eval95) == set(CLASSES)
    assert eval95[0] == Question("117", eval95[0].question, "代码编程", "代码解释")
    full = load_questions(shared_file("atombulb/question.json"))
    assert len(full) == 1091 and len({q.qid for q in full}) == 1091


def test_csv_with_question_only(tmp_path):
    path = _csv(tmp_path, [["question"], ["你好吗？"], ["介绍一下长城。"]])
    assert load_questions(path) == [Question("1", "你好吗？", UNCATEGORIZED), Question("2", "介绍一下长城。", UNCATEGORIZED)]


def test_csv_with_all_columns_bom_and_extra_columns(tmp_path):
    rows = [["qid", "question", "category", "reference", "note"],
            ["q7", "四百零七写成数字", "逻辑推理", "407", "x"],
            ["q8", "写一首诗", "", "", "y"]]
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\r\n").writerows(rows)
    path = tmp_path / "Q.CSV"
    path.write_bytes(b"\xef\xbb\xbf" + buf.getvalue().encode("utf-8"))
    assert load_questions(path) == [Question("q7", "四百零七写成数字", "逻辑推理", None, "407"),
                                    Question("q8", "写一首诗", UNCATEGORIZED, None, None)]


def test_gbk_csv_gets_a_hint_and_loads_with_its_encoding(tmp_path):
    path = _csv(tmp_path, [["question", "category"], ["介绍一下长城。", "通用知识"]], encoding="gbk")
    assert "gbk" in _error(path).lower()
    assert load_questions(path, encoding="gbk") == [Question("1", "介绍一下长城。", "通用知识")]


@pytest.mark.parametrize("name", ["q.txt", "q.jsonl", "questions"])
def test_unknown_format(tmp_path, name):
    path = tmp_path / name
    path.write_text("question\n你好\n", encoding="utf-8")
    message = _error(path)
    assert "unknown question-set format" in message and ".csv" in message and ".json" in message


def test_missing_file_and_directory(tmp_path):
    assert "does not exist" in _error(tmp_path / "nope.json")
    assert "does not exist" in _error(tmp_path / "nope.csv")
    folder = tmp_path / "dir.json"
    folder.mkdir()
    assert "directory" in _error(folder)


def test_invalid_json_names_the_line(tmp_path):
    path = tmp_path / "q.json"
    path.write_text('[\n {"qid": 1, "question": "你好",}\n]', encoding="utf-8")
    assert "not valid JSON" in _error(path, where="line 2")


def test_non_utf8_json(tmp_path):
    path = tmp_path / "q.json"
    path.write_bytes('[{"qid": 1, "question": "你好", "first_level_class": "通用知识"}]'.encode("gbk"))
    assert "not UTF-8" in _error(path)


@pytest.mark.parametrize("data, expected", [
    ([], "no questions"),
    ("questions", "got str"),
    ({"a": [], "b": []}, "2 arrays"),
    ({"a": 1}, "0 arrays"),
])
def test_json_top_level_problems(tmp_path, data, expected):
    assert expected in _error(_json(tmp_path, data))


GOOD = {"qid": 1, "question": "你好", "first_level_class": "人格特征"}


@pytest.mark.parametrize("item, expected", [
    ("你好", "expected an object"),
    ({"question": "你好", "first_level_class": "人格特征"}, "missing field qid"),
    ({"qid": 2}, "missing fields question, first_level_class"),
    ({**GOOD, "qid": 2.5}, "qid must be an integer or a string, got float"),
    ({**GOOD, "qid": True}, "got bool"),
    ({**GOOD, "qid": " "}, "empty qid"),
    ({**GOOD, "qid": 2, "question": "  "}, "empty question"),
    ({**GOOD, "qid": 2, "question": None}, "question must be a string, got null"),
    ({**GOOD, "qid": 2, "first_level_class": 3}, "first_level_class must be a string"),
    ({**GOOD, "qid": 2, "second_level_class": ["x"]}, "second_level_class must be a string"),
    ({**GOOD, "qid": "1"}, "duplicate qid '1' (also item 1)"),
])
def test_bad_json_item_names_its_position(tmp_path, item, expected):
    message = _error(_json(tmp_path, [GOOD, item]), where="item 2 of 2")
    assert expected in message


@pytest.mark.parametrize("rows, where, expected", [
    ([["text"], ["你好"]], "", "no column 'question'; columns found: 'text'"),
    ([["question"]], "", "no data rows"),
    ([["question"], ["你好"], [" "]], "row 2", "empty question"),
    ([["qid", "question"], ["1", "你好"], ["", "再见"]], "row 2", "empty qid"),
    ([["qid", "question"], ["1", "你好"], ["1", "再见"]], "row 2", "duplicate qid '1' (also row 1)"),
    ([["question", "question"], ["a", "b"]], "", "2 columns named 'question'"),
])
def test_bad_csv_names_its_row(tmp_path, rows, where, expected):
    assert expected in _error(_csv(tmp_path, rows), where=where)


def test_empty_csv(tmp_path):
    path = tmp_path / "q.csv"
    path.write_text("", encoding="utf-8")
    assert "is empty" in _error(path)
