"""Preference rows -> token ids through the SFT templates, a batch at a time, into Arrow files (the row
kinds `PAIRS` and `COMPLETIONS` of the data pipeline), and their collators.

A pair becomes `prompt ids + answer ids` twice: the prompt ids are what chat, web, API and eval feed for
the conversation (`Template.prompt`, tokenized whole), and an answer's ids are the trained tokens of the
conversation rendered with that answer (answer + closing text + EOS, what SFT trains). Only answer tokens
are scored. A KTO completion is one such sequence, plus the completion of another row of its batch
under the same prompt (`kl_ids`): the mismatched pair that KTO's KL reference point is estimated on.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Iterator

import pyarrow as pa
import torch

from llama2ft.core.errors import DataError
from llama2ft.core.files import kill_point
from llama2ft.data.dialogue import ASSISTANT, Turn, format_dialogue
from llama2ft.data.encode import BATCH_ROWS
from llama2ft.data.pairs import Completion, Pair, iter_completions, iter_pairs, prompt_turns
from llama2ft.data.sources import Item
from llama2ft.data.splits import EXAMPLES_KEPT, PREVIEW_KEPT, RowKind
from llama2ft.data.templates import IGNORE_INDEX, Rendered, Template, encode_rendered, tokenize

_IDS = pa.list_(pa.int32())
PAIR_SCHEMA = pa.schema([("prompt_ids", _IDS), ("chosen_ids", _IDS), ("rejected_ids", _IDS)])
COMPLETION_SCHEMA = pa.schema([("prompt_ids", _IDS), ("completion_ids", _IDS), ("kl_ids", _IDS),
                               ("desirable", pa.bool_())])


def prompt_ids(template: Template, tok: Any, conversations: list[tuple[Turn, ...]]) -> list[list[int]]:
    """The ids fed to the model to answer each conversation (as `templates.encode_prompt`, batched)."""
    return [enc.ids for enc in tokenize(tok, [template.prompt(list(turns), tok) for turns in conversations])]


def answer_ids(template: Template, tok: Any, answered: list[tuple[tuple[Turn, ...], str]]) -> list[list[int]]:
    """The trained ids of each (conversation, answer), as SFT trains the conversation's last answer."""
    rendered = []
    for turns, answer in answered:
        r = template.render([*turns, Turn(ASSISTANT, answer)], tok)
        rendered.append(Rendered(r.text, r.trained[-1:]))  # earlier answers belong to the prompt
    return [[i for i, lab in zip(e.input_ids, e.labels) if lab != IGNORE_INDEX] for e in encode_rendered(tok, rendered)]


class _PreferenceSplit:
    """One split of preference rows being encoded: rows gather into a batch, which is tokenized (in the
    fast tokenizer's threads) and appended to the Arrow file as one record batch."""

    schema: pa.Schema

    def __init__(self, path: Path, stats: dict, data: Any, template: Template, tokenizer: Any,
                 keep_examples: bool):
        self.stats, self.template, self.tok = stats, template, tokenizer
        self.max_seq_len, self.keep_examples = int(data.max_seq_len), keep_examples
        self.writer = pa.ipc.new_stream(str(path), self.schema)
        self.batch: list[tuple[tuple[str, int], Any]] = []  # ((file, row), example)
        self.preview: list[tuple[tuple[str, int], list[int], list[int], dict]] = []
        self.examples: list = []

    def add(self, row: int, value: Any, canonical: bool, path: str) -> None:
        for example in (value if isinstance(value, tuple) else (value,)):
            self.batch.append(((path, row), example))
            if self.keep_examples and len(self.examples) < EXAMPLES_KEPT:
                self.examples.append(example)
        if len(self.batch) >= BATCH_ROWS:
            self._flush()

    def _room(self, where: tuple[str, int], prompt: list[int]) -> int:
        if len(prompt) >= self.max_seq_len:
            raise DataError(f"{where[0]} row {where[1]}: the prompt alone is {len(prompt)} tokens and fills "
                            f"data.max_seq_len={self.max_seq_len}: no answer token would be scored")
        return self.max_seq_len - len(prompt)

    def _flush(self) -> None:
        if self.batch:
            columns = self._encode(self.batch)
            self.writer.write_batch(pa.RecordBatch.from_pydict(columns, schema=self.schema))
            self.batch = []
            kill_point("data-batch")

    def _show(self, where: tuple[str, int], prompt: list[int], answer: list[int], extra: dict) -> None:
        if len(self.preview) < PREVIEW_KEPT:
            self.preview.append((where, prompt + answer, [IGNORE_INDEX] * len(prompt) + answer, extra))

    def _encode(self, batch: list[tuple[tuple[str, int], Any]]) -> dict[str, list]:
        raise NotImplementedError

    def close(self) -> None:
        self._flush()
        self.writer.close()


class PairSplit(_PreferenceSplit):
    schema = PAIR_SCHEMA

    def _encode(self, batch: list[tuple[tuple[str, int], Pair]]) -> dict[str, list]:
        pairs = [p for _, p in batch]
        prompts = prompt_ids(self.template, self.tok, [p.turns for p in pairs])
        answers = answer_ids(self.template, self.tok, [(p.turns, a) for p in pairs for a in (p.chosen, p.rejected)])
        out: dict[str, list] = {"prompt_ids": [], "chosen_ids": [], "rejected_ids": []}
        s = self.stats
        for k, ((where, _), prompt) in enumerate(zip(batch, prompts)):
            room = self._room(where, prompt)
            chosen, rejected = answers[2 * k], answers[2 * k + 1]
            s["truncated_pairs"] += len(chosen) > room or len(rejected) > room
            chosen, rejected = chosen[:room], rejected[:room]
            s["pairs"] += 1
            s["prompt_tokens"] += len(prompt)
            s["answer_tokens"] += len(chosen) + len(rejected)
            s["max_len"] = max(s["max_len"], len(prompt) + max(len(chosen), len(rejected)))
            out["prompt_ids"].append(prompt)
            out["chosen_ids"].append(chosen)
            out["rejected_ids"].append(rejected)
            self._show(where, prompt, chosen, {"rejected_ids": rejected})
        return out


class CompletionSplit(_PreferenceSplit):
    schema = COMPLETION_SCHEMA

    def _encode(self, batch: list[tuple[tuple[str, int], Completion]]) -> dict[str, list]:
        items = [c for _, c in batch]
        prompts = prompt_ids(self.template, self.tok, [c.turns for c in items])
        answers = answer_ids(self.template, self.tok, [(c.turns, c.completion) for c in items])
        out: dict[str, list] = {"prompt_ids": [], "completion_ids": [], "kl_ids": [], "desirable": []}
        s, n = self.stats, len(items)
        for k, ((where, c), prompt) in enumerate(zip(batch, prompts)):
            room = self._room(where, prompt)
            # half a batch away: another prompt's completion (a pairs row puts its two answers side by side)
            completion, kl = answers[k], answers[(k + n // 2) % n]
            s["truncated"] += len(completion) > room
            completion = completion[:room]
            s["completions"] += 1
            s["desirable" if c.desirable else "undesirable"] += 1
            s["prompt_tokens"] += len(prompt)
            s["answer_tokens"] += len(completion)
            s["max_len"] = max(s["max_len"], len(prompt) + len(completion))
            out["prompt_ids"].append(prompt)
            out["completion_ids"].append(completion)
            out["kl_ids"].append(kl[:room])
            out["desirable"].append(c.desirable)
            self._show(where, prompt, completion, {"desirable": c.desirable})
        return out


class PairRows(RowKind):
    """prompt/chosen/rejected rows (DPO, ORPO, SimPO)."""

    name = "pairs"

    def items(self, path: str, data: Any, check: bool = True) -> Iterator[Item]:
        return iter_pairs(path, data, check)

    def new_stats(self, skipped: int) -> dict:
        return {"format": "pairs", "pairs": 0, "rows_skipped": skipped, "truncated_pairs": 0, "prompt_tokens": 0,
                "answer_tokens": 0, "max_len": 0}

    def split(self, path: Path, stats: dict, data: Any, template: Template, tokenizer: Any,
              pool: ThreadPoolExecutor, keep_examples: bool) -> PairSplit:
        return PairSplit(path, stats, data, template, tokenizer, keep_examples)

    def example_json(self, example: Pair) -> dict:
        return {"prompt": format_dialogue(example.turns), "chosen": example.chosen, "rejected": example.rejected}

    def example_from_json(self, obj: dict) -> Pair:
        return Pair(prompt_turns(obj["prompt"]), obj["chosen"], obj["rejected"])

    def summary(self, stats: dict) -> str:
        held = stats.get("eval", {}).get("pairs", 0)
        return (f"data: {stats['pairs']} training pairs, {held} held out; {stats['truncated_pairs']} cut to "
                f"data.max_seq_len, {stats['rows_skipped']} rows skipped")

    def check_split(self, stats: dict, files: str) -> None:
        if not stats["pairs"]:
            raise DataError(f"{files}: no usable pairs")


class CompletionRows(RowKind):
    """prompt/completion/label rows, or pairs rows as a desirable and an undesirable completion (KTO)."""

    name = "completions"

    def items(self, path: str, data: Any, check: bool = True) -> Iterator[Item]:
        return iter_completions(path, data, check)

    def new_stats(self, skipped: int) -> dict:
        return {"format": "completions", "completions": 0, "desirable": 0, "undesirable": 0, "rows_skipped": skipped,
                "truncated": 0, "prompt_tokens": 0, "answer_tokens": 0, "max_len": 0}

    def split(self, path: Path, stats: dict, data: Any, template: Template, tokenizer: Any,
              pool: ThreadPoolExecutor, keep_examples: bool) -> CompletionSplit:
        return CompletionSplit(path, stats, data, template, tokenizer, keep_examples)

    def example_json(self, example: Completion) -> dict:
        return {"prompt": format_dialogue(example.turns), "completion": example.completion,
                "desirable": example.desirable}

    def example_from_json(self, obj: dict) -> Completion:
        return Completion(prompt_turns(obj["prompt"]), obj["completion"], obj["desirable"])

    def summary(self, stats: dict) -> str:
        held = stats.get("eval", {}).get("completions", 0)
        return (f"data: {stats['completions']} training completions ({stats['desirable']} desirable, "
                f"{stats['undesirable']} undesirable), {held} held out; {stats['truncated']} cut to data.max_seq_len, "
                f"{stats['rows_skipped']} rows skipped")

    def check_split(self, stats: dict, files: str) -> None:
        if not stats["desirable"] or not stats["undesirable"]:
            raise DataError(f"{files}: {stats['desirable']} desirable and {stats['undesirable']} undesirable "
                            "completions; KTO needs both kinds (label true and false)")


PAIRS, COMPLETIONS = PairRows(), CompletionRows()


def pad_rows(rows: list[tuple[list[int], list[int]]], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Right-padded `prompt + answer` rows whose labels are the answer tokens only (pairs, completions, and the
    answers a reward model scores)."""
    width = max(len(p) + len(a) for p, a in rows)
    ids = torch.full((len(rows), width), pad_token_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (p, a) in enumerate(rows):
        n = len(p) + len(a)
        ids[i, :n] = torch.as_tensor([*p, *a])
        labels[i, len(p):n] = torch.as_tensor(a)
        mask[i, :n] = 1
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}


def _floats(features: list[dict], key: str) -> torch.Tensor:
    return torch.tensor([f[key] for f in features], dtype=torch.float32)


class PairCollator:
    """A batch of B pairs as 2B rows (chosen rows first, then rejected); precomputed reference
    log-probs ride along when the pairs have them."""

    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        rows = [(f["prompt_ids"], f[k]) for k in ("chosen_ids", "rejected_ids") for f in features]
        batch = pad_rows(rows, self.pad_token_id)
        if "ref_chosen" in features[0]:
            batch["ref_chosen"], batch["ref_rejected"] = _floats(features, "ref_chosen"), _floats(features, "ref_rejected")
        return batch


class CompletionCollator:
    """A batch of B completions as 2B rows (the completions, then their mismatched KL rows), with the
    labels (`desirable`) and precomputed reference log-probs when present."""

    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        rows = [(f["prompt_ids"], f[k]) for k in ("completion_ids", "kl_ids") for f in features]
        batch = pad_rows(rows, self.pad_token_id)
        batch["desirable"] = torch.tensor([bool(f["desirable"]) for f in features])
        if "ref_logps" in features[0]:
            batch["ref_logps"], batch["ref_kl_logps"] = _floats(features, "ref_logps"), _floats(features, "ref_kl_logps")
        return batch
