"""Preference rows, read and checked one at a time from any data file type the SFT data step reads
(.csv, .jsonl, .json, .parquet, a datasets folder): pairs (`prompt`, `chosen`, `rejected`: DPO, ORPO,
SimPO) and single completions (`prompt`, `completion`, `label`: KTO; a pairs row gives KTO its chosen
answer as desirable and its rejected one as undesirable).

`prompt` is a community-format dialogue ending with a Human turn (`<s>Human: ...\\n</s>`, earlier turns
included) or plain question text; answers are answer text only. Encoding is in `pair_encode`.
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Callable, Optional

from llama2ft.core.errors import DataError
from llama2ft.data.csv_reader import read_header
from llama2ft.data.dialogue import HUMAN, DialogueFormatError, Turn, parse_dialogue
from llama2ft.data.records import file_kind, scan_records
from llama2ft.data.sources import BAD, VALID, Item

PAIR_COLUMNS = ("prompt", "chosen", "rejected")
COMPLETION_COLUMNS = ("prompt", "completion", "label")
_TRUE, _FALSE = ("true", "1", "yes", "desirable", "good"), ("false", "0", "no", "undesirable", "bad")


@dataclass(frozen=True)
class Pair:
    turns: tuple[Turn, ...]  # the conversation, ending with the question
    chosen: str
    rejected: str


@dataclass(frozen=True)
class Completion:
    turns: tuple[Turn, ...]
    completion: str
    desirable: bool


def prompt_turns(prompt: str) -> tuple[Turn, ...]:
    """The conversation a prompt cell stands for; DialogueFormatError says why it is unusable."""
    if not prompt.strip():
        raise DialogueFormatError("empty prompt")
    if not prompt.lstrip().startswith("<s>"):
        return (Turn(HUMAN, prompt.strip()),)
    # A dialogue ending with a question: parse it with a placeholder answer, which the parser requires.
    turns = parse_dialogue(prompt.rstrip() + "<s>Assistant: .\n</s>")[:-1]
    if not turns or turns[-1].role != HUMAN:
        raise DialogueFormatError("the prompt does not end with a Human turn (<s>Human: ...\\n</s>): "
                                  "there is no question for the answers to answer")
    return tuple(turns)


def _answer(name: str, text: Any) -> str:
    if not isinstance(text, str):
        raise DialogueFormatError(f"{name!r} must be text, not {type(text).__name__}")
    text = text.strip()
    if not text:
        raise DialogueFormatError(f"empty {name} answer")
    if "<s>" in text or "</s>" in text:
        raise DialogueFormatError(f"the {name} answer contains <s> or </s>: it must be answer text only")
    return text


def _prompt(fields: dict) -> tuple[Turn, ...]:
    if not isinstance(fields["prompt"], str):
        raise DialogueFormatError(f"'prompt' must be text, not {type(fields['prompt']).__name__}")
    return prompt_turns(fields["prompt"])


def _missing(fields: dict, columns: tuple[str, ...], need: str) -> None:
    missing = [c for c in columns if c not in fields]
    if missing:
        raise DialogueFormatError(f"no field {', '.join(map(repr, missing))} (fields: {', '.join(map(repr, fields))});"
                                  f" {need}")


def check_pair(fields: dict) -> Pair:
    """One row as a Pair; DialogueFormatError says what is wrong with it."""
    _missing(fields, PAIR_COLUMNS, f"a pairs file needs {', '.join(PAIR_COLUMNS)}")
    turns = _prompt(fields)
    chosen, rejected = _answer("chosen", fields["chosen"] or ""), _answer("rejected", fields["rejected"] or "")
    if chosen == rejected:
        raise DialogueFormatError("chosen and rejected are the same text: the pair prefers nothing")
    return Pair(turns, chosen, rejected)


def parse_label(value: Any) -> bool:
    """A KTO label: true/false (or 1/0, yes/no, desirable/undesirable) for a desirable completion."""
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    text = str(value).strip().lower() if isinstance(value, str) else None
    if text in _TRUE or text in _FALSE:
        return text in _TRUE
    raise DialogueFormatError(f"label {value!r} must be true or false (true: a desirable completion)")


def check_completions(fields: dict) -> tuple[Completion, ...]:
    """One KTO row: a (prompt, completion, label) row, or a pairs row as its chosen answer (desirable)
    and its rejected one (undesirable)."""
    if "completion" not in fields and {"chosen", "rejected"} <= set(fields):
        pair = check_pair(fields)
        return Completion(pair.turns, pair.chosen, True), Completion(pair.turns, pair.rejected, False)
    _missing(fields, COMPLETION_COLUMNS, f"a KTO file needs {', '.join(COMPLETION_COLUMNS)} "
                                         f"(or {', '.join(PAIR_COLUMNS)})")
    return (Completion(_prompt(fields), _answer("completion", fields["completion"] or ""),
                       parse_label(fields["label"])),)


def _csv_columns(path: str, encoding: Optional[str], alternatives: tuple[tuple[str, ...], ...]) -> None:
    """A csv whose header lacks the columns fails once for the file, not once per row."""
    header = [h.strip() for h in read_header(path, encoding)]
    if not any(set(cols) <= set(header) for cols in alternatives):
        wanted = min(alternatives, key=lambda cols: len(set(cols) - set(header)))
        missing = [c for c in wanted if c not in header]
        raise DataError(f"{path} has no column {', '.join(map(repr, missing))}; columns found: "
                        f"{', '.join(map(repr, header))}")


def _iter(path: str, data: Any, check_row: Callable[[dict], Any],
          alternatives: tuple[tuple[str, ...], ...]) -> Iterator[Item]:
    if file_kind(path) == "csv":
        _csv_columns(path, data.encoding, alternatives)
    for record in scan_records(path, data.encoding):
        if record.problem is not None:
            yield Item(record.number, record.where, BAD, None, record.problem)
            continue
        try:
            yield Item(record.number, record.where, VALID, check_row(record.fields))
        except DialogueFormatError as exc:
            yield Item(record.number, record.where, BAD, None, str(exc))


def iter_pairs(path: str, data: Any, check: bool = True) -> Iterator[Item]:
    """Every row of a pairs file as an Item whose value is a Pair (`data`: the data config node; rows
    are parsed on every pass, `check` is accepted for the pipeline's second pass)."""
    return _iter(path, data, check_pair, (PAIR_COLUMNS,))


def iter_completions(path: str, data: Any, check: bool = True) -> Iterator[Item]:
    """Every row of a KTO file as an Item whose value is a tuple of Completions (one, or two for a pair)."""
    return _iter(path, data, check_completions, (COMPLETION_COLUMNS, PAIR_COLUMNS))
