"""Prompt rows for learning from rewards (GRPO): each row is a question to answer plus any other columns,
which the reward functions receive (e.g. `answer` for exact match). Read from any data file type the SFT
data step reads, in either of two shapes, chosen per file:

- a `prompt` column: plain question text or a community-format dialogue ending with a Human turn (as DPO's
  prompts); every other column is kept for the rewards;
- dialogues (community `text` cells, ShareGPT, OpenAI chat, Alpaca rows): the conversation up to its last
  answer is the prompt, and that answer becomes the row's `answer` column.

A pairs file (prompt, chosen, rejected) is refused: it is data for the preference methods. The prompt ids
are the ids chat, web, API and eval feed for the same conversation (`Template.prompt`, tokenized whole;
a row's own system prompt as the SFT data step applies it).
"""
from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import pyarrow as pa
import torch

from llama2ft.core.errors import DataError
from llama2ft.data.csv_reader import read_header
from llama2ft.data.dialogue import ASSISTANT, DialogueFormatError, Turn, format_dialogue, parse_dialogue
from llama2ft.data.pair_encode import PromptedSplit
from llama2ft.data.pairs import PAIR_COLUMNS, prompt_turns
from llama2ft.data.records import file_kind, scan_records
from llama2ft.data.sources import BAD, VALID, Item, iter_items
from llama2ft.data.splits import RowKind
from llama2ft.data.templates import Template, tokenize

PROMPT_COLUMN = "prompt"
ANSWER_COLUMN = "answer"  # what a dialogue row's last answer becomes (exact_match compares with it)
_IDS = pa.list_(pa.int32())
PROMPT_SCHEMA = pa.schema([("prompt_ids", _IDS), ("prompt", pa.string()), ("columns", pa.string())])


@dataclass(frozen=True)
class PromptRow:
    turns: tuple[Turn, ...]  # the conversation, ending with the question
    prompt: str  # as the reward functions receive it: the question text (or the dialogue, several turns)
    columns: dict = field(default_factory=dict)  # the row's other columns
    system: Optional[str] = None  # the row's own system prompt (a ShareGPT/OpenAI system message)


def prompt_text(turns: tuple[Turn, ...]) -> str:
    """A prompt as the rewards see it: one question as its text, a longer conversation in community format."""
    return turns[0].text if len(turns) == 1 else format_dialogue(turns)


def _refuse_pairs(path: str, columns: Any) -> None:
    if set(PAIR_COLUMNS) <= set(columns):
        raise DataError(f"{path} is a pairs file ({', '.join(PAIR_COLUMNS)}): method=grpo learns from rewards on "
                        "prompts (a `prompt` column, or dialogues whose last answer is the reference); pairs train "
                        "method=dpo, orpo, simpo, kto or rm")


def _from_prompt_field(fields: dict) -> PromptRow:
    value = fields[PROMPT_COLUMN]
    if not isinstance(value, str):
        raise DialogueFormatError(f"'prompt' must be text, not {type(value).__name__}")
    turns = prompt_turns(value)
    return PromptRow(turns, prompt_text(turns), {k: v for k, v in fields.items() if k != PROMPT_COLUMN})


def _from_dialogue(value: Any) -> PromptRow:
    turns = parse_dialogue(value) if isinstance(value, str) else list(value)
    last = max((i for i, t in enumerate(turns) if t.role == ASSISTANT), default=None)
    if not last:  # a dialogue always has an answer; one with nothing before it asks nothing
        raise DialogueFormatError("no question before the last answer")
    asked = tuple(turns[:last])
    return PromptRow(asked, prompt_text(asked), {ANSWER_COLUMN: turns[last].text}, getattr(value, "system", None))


def _first_fields(path: str, encoding: Optional[str]) -> dict:
    for record in scan_records(path, encoding):
        return record.fields or {}
    return {}


def iter_prompts(path: str, data: Any, check: bool = True) -> Iterator[Item]:
    """Every row of a file as an Item whose value is a PromptRow; the file's shape is read from its header
    (csv) or first row."""
    columns = read_header(path, data.encoding) if file_kind(path) == "csv" else list(_first_fields(path, data.encoding))
    columns = [c.strip() for c in columns]
    _refuse_pairs(path, columns)
    if PROMPT_COLUMN not in columns:
        for item in iter_items(path, data):
            if item.status == BAD:
                yield item
                continue
            try:
                yield item._replace(status=VALID, value=_from_dialogue(item.value))
            except DialogueFormatError as exc:
                yield item._replace(status=BAD, value=None, problem=str(exc))
        return
    for record in scan_records(path, data.encoding):
        if record.problem is not None:
            yield Item(record.number, record.where, BAD, None, record.problem)
            continue
        try:
            if PROMPT_COLUMN not in record.fields:
                raise DialogueFormatError(f"no field 'prompt' (fields: {', '.join(map(repr, record.fields))})")
            yield Item(record.number, record.where, VALID, _from_prompt_field(record.fields))
        except DialogueFormatError as exc:
            yield Item(record.number, record.where, BAD, None, str(exc))


def prompt_ids_of(template: Template, tok: Any, rows: list[PromptRow]) -> list[list[int]]:
    """The ids chat feeds for each row's conversation (with the row's own system prompt, if it has one)."""
    texts = [(template if r.system in (None, template.system) else type(template)(r.system)).prompt(list(r.turns), tok)
             for r in rows]
    return [list(enc.ids) for enc in tokenize(tok, texts)]


class PromptSplit(PromptedSplit):
    schema = PROMPT_SCHEMA

    def _encode(self, batch: list[tuple[tuple[str, int], PromptRow]]) -> dict[str, list]:
        rows = [r for _, r in batch]
        out: dict[str, list] = {"prompt_ids": [], "prompt": [], "columns": []}
        s = self.stats
        for (where, row), ids in zip(batch, prompt_ids_of(self.template, self.tok, rows)):
            self._room(where, ids)
            s["prompts"] += 1
            s["prompt_tokens"] += len(ids)
            s["max_len"] = max(s["max_len"], len(ids))
            s["rows_with_system"] += row.system is not None
            out["prompt_ids"].append(ids)
            out["prompt"].append(row.prompt)
            out["columns"].append(json.dumps(row.columns, ensure_ascii=False, default=str))
            self._show(where, ids, [], {"columns": row.columns})
        return out


class PromptRows(RowKind):
    """Prompts with the columns their rewards read (GRPO)."""

    name = "prompts"

    def items(self, path: str, data: Any, check: bool = True) -> Iterator[Item]:
        return iter_prompts(path, data, check)

    def new_stats(self, skipped: int) -> dict:
        return {"format": "prompts", "prompts": 0, "rows_skipped": skipped, "prompt_tokens": 0, "max_len": 0,
                "rows_with_system": 0}

    def split(self, path: Path, stats: dict, data: Any, template: Template, tokenizer: Any,
              pool: ThreadPoolExecutor, keep_examples: bool) -> PromptSplit:
        return PromptSplit(path, stats, data, template, tokenizer, keep_examples)

    def example_json(self, example: PromptRow) -> dict:
        return {"prompt": format_dialogue(example.turns), "columns": example.columns, "system": example.system}

    def example_from_json(self, obj: dict) -> PromptRow:
        turns = prompt_turns(obj["prompt"])
        return PromptRow(turns, prompt_text(turns), obj["columns"], obj.get("system"))

    def summary(self, stats: dict) -> str:
        held = stats.get("eval", {}).get("prompts", 0)
        return (f"data: {stats['prompts']} training prompts, {held} held out; {stats['rows_skipped']} rows skipped; "
                f"longest prompt {stats['max_len']} tokens")

    def check_split(self, stats: dict, files: str) -> None:
        if not stats["prompts"]:
            raise DataError(f"{files}: no usable prompts")


PROMPTS = PromptRows()


class PromptCollator:
    """A batch of prompts, left-padded for generation (`input_ids`, `attention_mask`), with the prompt texts,
    their turns and the other columns the rewards read."""

    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        width = max(len(f["prompt_ids"]) for f in features)
        ids = torch.full((len(features), width), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(features), width), dtype=torch.long)
        for i, f in enumerate(features):
            n = len(f["prompt_ids"])
            ids[i, width - n:] = torch.as_tensor(f["prompt_ids"])
            mask[i, width - n:] = 1
        return {"input_ids": ids, "attention_mask": mask, "prompt": [f["prompt"] for f in features],
                "turns": [prompt_turns(f["prompt"]) for f in features],
                "columns": [json.loads(f["columns"]) for f in features]}
