"""Question sets for `llama2ft-eval`: the built-in set, AtomBulb JSON and csv files.

Every problem with a question file raises one DataError naming the file and the item or row.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from llama2ft import PROJECT_ROOT
from llama2ft.core.errors import DataError
from llama2ft.data.csv_reader import read_columns
from llama2ft.data.dialogue import Turn

BUILTIN_QUESTIONS = PROJECT_ROOT / "data" / "eval" / "questions.json"

# AtomBulb's eight first-level classes, in the order reports list them.
CLASSES = ("通用知识", "语言理解", "创作能力", "工作技能", "代码编程", "逻辑推理", "人格特征", "语言表达")
UNCATEGORIZED = "未分类"  # the class of csv questions without a category
# English labels for charts drawn without a CJK font, and for readers of the report.
CLASS_NAMES_EN = {
    "通用知识": "general knowledge",
    "语言理解": "language understanding",
    "创作能力": "creative writing",
    "工作技能": "work skills",
    "代码编程": "coding",
    "逻辑推理": "logical reasoning",
    "人格特征": "personality",
    "语言表达": "expression",
    UNCATEGORIZED: "uncategorized",
}

# Asks for Chinese answers, as the Llama2 Chinese community's evaluation of Llama-2-Chat did; the
# English half is there because the original model follows English instructions more reliably.
COMMUNITY_SYSTEM_PROMPT = (
    "You are a helpful, honest and harmless assistant. Always answer in Simplified Chinese, "
    "even when the question contains English words or code. "
    "你是一个乐于助人、诚实且无害的助手。无论问题中是否包含英文或代码，请始终用简体中文回答。"
)

_ATOMBULB_EXAMPLE = '[{"qid": 1, "question": "...", "first_level_class": "通用知识", "second_level_class": "..."}]'


@dataclass(frozen=True)
class Question:
    qid: str
    question: str
    category: str  # first-level class
    subcategory: Optional[str] = None
    reference: Optional[str] = None
    turns: Optional[tuple[Turn, ...]] = None  # the conversation to answer, when more than the question

    def conversation(self) -> list[Turn]:
        return list(self.turns) if self.turns else [Turn("human", self.question)]


def load_questions(path: Optional[str | os.PathLike[str]], encoding: Optional[str] = None) -> list[Question]:
    """The questions in `path` (`.json`: AtomBulb format, `.csv`: a `question` column), or the
    built-in set when `path` is None. `encoding` applies to csv files (None: UTF-8, BOM optional)."""
    if path is None:
        return _load_json(BUILTIN_QUESTIONS)
    shown = os.fspath(path)
    suffix = Path(shown).suffix.lower()
    if suffix == ".json":
        questions = _load_json(Path(shown))
    elif suffix == ".csv":
        questions = _load_csv(shown, encoding)
    else:
        raise DataError(
            f"{shown}: unknown question-set format {suffix or '(no extension)'!r}; use an AtomBulb .json "
            f"file ({_ATOMBULB_EXAMPLE}) or a .csv file with a 'question' column "
            "(optional: category, reference, qid), or omit questions= for the built-in set"
        )
    return questions


def _load_json(path: Path) -> list[Question]:
    items = _json_items(path)
    questions: list[Question] = []
    seen: dict[str, int] = {}
    for i, item in enumerate(items, 1):
        where = f"{path} item {i} of {len(items)}"
        if not isinstance(item, dict):
            raise DataError(f"{where}: expected an object like {_ATOMBULB_EXAMPLE[1:-1]}, got {_kind(item)}")
        missing = [k for k in ("qid", "question", "first_level_class") if k not in item]
        if missing:
            raise DataError(f"{where}: missing field{'s' if len(missing) > 1 else ''} {', '.join(missing)} "
                            f"(fields found: {', '.join(map(str, item)) or 'none'})")
        qid = _qid(item["qid"], where)
        _check_unique(qid, i, seen, where, "item")
        questions.append(Question(
            qid=qid,
            question=_text(item, "question", where),
            category=_text(item, "first_level_class", where),
            subcategory=_text(item, "second_level_class", where, optional=True),
            reference=_text(item, "reference", where, optional=True),
        ))
    return questions


def _json_items(path: Path) -> list[Any]:
    """The list of items: the top-level array, or the one array inside a top-level object."""
    if path.is_dir():
        raise DataError(f"{path} is a directory, not a question file")
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path} does not exist; check the questions= path") from None
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        data = json.loads(raw.decode("utf-8-sig"))
    except UnicodeDecodeError as exc:
        raise DataError(f"{path} is not UTF-8 text (undecodable byte 0x{raw[exc.start]:02x} at offset {exc.start}); "
                        "save it as UTF-8 JSON") from None
    except json.JSONDecodeError as exc:
        raise DataError(f"{path} is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    if isinstance(data, dict):
        lists = [k for k, v in data.items() if isinstance(v, list)]
        if len(lists) != 1:
            raise DataError(f"{path}: expected a JSON array of questions ({_ATOMBULB_EXAMPLE}) or an object with "
                            f"exactly one array in it; found an object with {len(lists)} arrays")
        data = data[lists[0]]
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON array of questions ({_ATOMBULB_EXAMPLE}), got {_kind(data)}")
    if not data:
        raise DataError(f"{path} contains no questions (the array is empty)")
    return data


def _load_csv(path: str, encoding: Optional[str]) -> list[Question]:
    rows = read_columns(path, ("question",), ("category", "subcategory", "reference", "qid"), encoding)
    questions: list[Question] = []
    seen: dict[str, int] = {}
    for n, cells in rows:
        if not cells["question"].strip():
            raise DataError(f"{path} row {n}: empty question")
        if "qid" in cells:
            qid = cells["qid"].strip()
            if not qid:
                raise DataError(f"{path} row {n}: empty qid (give every row a qid, or drop the qid column)")
        else:
            qid = str(n)  # the data row number: stable while the file is unchanged, so runs can resume
        _check_unique(qid, n, seen, f"{path} row {n}", "row")
        questions.append(Question(
            qid=qid,
            question=cells["question"],
            category=cells.get("category", "").strip() or UNCATEGORIZED,
            subcategory=cells.get("subcategory", "").strip() or None,
            reference=cells.get("reference") or None,  # an empty cell: this question has no reference
        ))
    return questions


def _qid(value: Any, where: str) -> str:
    # bool is an int subclass, and floats would not survive a str() round trip as ids.
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise DataError(f"{where}: qid must be an integer or a string, got {_kind(value)}")
    qid = str(value).strip()
    if not qid:
        raise DataError(f"{where}: empty qid")
    return qid


def _text(item: dict, key: str, where: str, optional: bool = False) -> Optional[str]:
    value = item.get(key)
    if optional and value is None:
        return None
    if not isinstance(value, str):
        raise DataError(f"{where}: {key} must be a string, got {_kind(value)}")
    if not value.strip():
        if optional:
            return None
        raise DataError(f"{where}: empty {key}")
    return value if key in ("question", "reference") else value.strip()


def _check_unique(qid: str, index: int, seen: dict[str, int], where: str, unit: str) -> None:
    if qid in seen:
        raise DataError(f"{where}: duplicate qid {qid!r} (also {unit} {seen[qid]}); "
                        "qids must be unique so answers can be matched and resumed")
    seen[qid] = index


def _kind(value: Any) -> str:
    return "null" if value is None else type(value).__name__
