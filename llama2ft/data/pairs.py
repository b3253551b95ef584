"""Preference pairs (DPO, ORPO): a file with columns `prompt`, `chosen`, `rejected`, checked row by row
and encoded through the SFT templates.

`prompt` is a community-format dialogue ending with a Human turn (`<s>Human: ...\\n</s>`, earlier turns
included) or plain question text; `chosen`/`rejected` are answer texts. A pair becomes two sequences
`prompt ids + answer ids`: the prompt ids are `templates.encode_prompt` of the conversation (exactly what
chat, web, API and eval feed), and an answer's ids are the trained tokens of the conversation rendered
with that answer (answer + closing text + EOS, what SFT trains). Only answer tokens are scored.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any, Optional

import torch

from llama2ft.core.errors import DataError
from llama2ft.data.csv_reader import read_columns
from llama2ft.data.dialogue import ASSISTANT, HUMAN, DialogueFormatError, Turn, parse_dialogue
from llama2ft.data.records import file_kind, iter_records
from llama2ft.data.templates import IGNORE_INDEX, Rendered, Template, encode_prompt, encode_rendered

PAIR_COLUMNS = ("prompt", "chosen", "rejected")


@dataclass
class Pair:
    row: int
    turns: list[Turn]  # the conversation, ending with the question
    chosen: str
    rejected: str


@dataclass
class EncodedPair:
    row: int
    prompt_ids: list[int]
    chosen_ids: list[int]  # answer tokens only
    rejected_ids: list[int]


@dataclass
class PairSplits:
    train: list[EncodedPair]
    eval: list[EncodedPair]
    eval_pairs: list[Pair]  # the held-out pairs as text (greedy answers before/after)
    stats: dict = field(default_factory=dict)


def read_pair_table(path: str, encoding: Optional[str]) -> list[tuple[int, str, dict[str, str]]]:
    """`(row number, where, {prompt, chosen, rejected})` of a pairs file (.csv, .jsonl, .json, .parquet or a
    datasets folder); `where` is "row 3" or "line 7" for errors. The one place that reads the file."""
    if file_kind(path) == "csv":
        return [(n, f"row {n}", cells) for n, cells in read_columns(path, PAIR_COLUMNS, encoding=encoding)]
    out = []
    for record in iter_records(path, encoding):
        fields = record.fields or {}
        missing = [c for c in PAIR_COLUMNS if c not in fields]
        if missing:
            raise record.error(f"no field {', '.join(map(repr, missing))} (fields: {', '.join(map(repr, fields))}); "
                               f"a pairs file needs {', '.join(PAIR_COLUMNS)}")
        cells = {c: "" if fields[c] is None else fields[c] for c in PAIR_COLUMNS}
        wrong = [c for c, v in cells.items() if not isinstance(v, str)]
        if wrong:
            raise record.error(f"{', '.join(map(repr, wrong))} must be text, not {type(cells[wrong[0]]).__name__}")
        out.append((record.number, record.where, cells))
    if not out:
        raise DataError(f"{path} has no rows")
    return out


def prompt_turns(prompt: str) -> list[Turn]:
    """The conversation a prompt cell stands for; DialogueFormatError says why it is unusable."""
    if not prompt.strip():
        raise DialogueFormatError("empty prompt")
    if not prompt.lstrip().startswith("<s>"):
        return [Turn(HUMAN, prompt.strip())]
    # A dialogue ending with a question: parse it with a placeholder answer, which the parser requires.
    turns = parse_dialogue(prompt.rstrip() + "<s>Assistant: .\n</s>")[:-1]
    if not turns or turns[-1].role != HUMAN:
        raise DialogueFormatError("the prompt does not end with a Human turn (<s>Human: ...\\n</s>): "
                                  "there is no question for chosen/rejected to answer")
    return turns


def check_pair(cells: dict[str, str]) -> Pair:
    """One row as a Pair (row number 0); DialogueFormatError says what is wrong with it."""
    turns = prompt_turns(cells["prompt"])
    chosen, rejected = cells["chosen"].strip(), cells["rejected"].strip()
    for name, text in (("chosen", chosen), ("rejected", rejected)):
        if not text:
            raise DialogueFormatError(f"empty {name} answer")
        if "<s>" in text or "</s>" in text:
            raise DialogueFormatError(f"the {name} answer contains <s> or </s>: it must be answer text only")
    if chosen == rejected:
        raise DialogueFormatError("chosen and rejected are the same text: the pair prefers nothing")
    return Pair(0, turns, chosen, rejected)


def read_pairs(path: str, encoding: Optional[str], skip_bad_rows: bool) -> tuple[list[Pair], list[tuple[int, str]]]:
    """Every usable pair of a file, and the skipped rows (a bad row raises unless `skip_bad_rows`)."""
    pairs, skipped = [], []
    for number, where, cells in read_pair_table(path, encoding):
        try:
            pair = check_pair(cells)
        except DialogueFormatError as exc:
            if not skip_bad_rows:
                raise DataError(f"{path} {where}: {exc}") from None
            skipped.append((number, str(exc)))
            continue
        pair.row = number
        pairs.append(pair)
    if not pairs:
        raise DataError(f"{path}: no usable pairs ({len(skipped)} skipped)")
    return pairs, skipped


def answer_ids(template: Template, tok: Any, turns: list[Turn], answers: list[str]) -> list[list[int]]:
    """The trained ids of each answer to the conversation `turns`, as SFT trains them."""
    rendered = []
    for answer in answers:
        r = template.render([*turns, Turn(ASSISTANT, answer)], tok)
        rendered.append(Rendered(r.text, r.trained[-1:]))  # earlier answers belong to the prompt
    return [[i for i, lab in zip(e.input_ids, e.labels) if lab != IGNORE_INDEX]
            for e in encode_rendered(tok, rendered)]


def encode_pairs(template: Template, tok: Any, pairs: list[Pair], max_seq_len: int, path: str,
                 stats: dict) -> list[EncodedPair]:
    """Token ids of each pair; an answer that does not fit after its prompt is cut (counted in `stats`),
    a prompt that alone fills `max_seq_len` is a DataError naming the row."""
    out = []
    for pair in pairs:
        prompt = encode_prompt(template, tok, pair.turns)
        if len(prompt) >= max_seq_len:
            raise DataError(f"{path} row {pair.row}: the prompt alone is {len(prompt)} tokens and fills "
                            f"data.max_seq_len={max_seq_len}: no answer token would be scored")
        chosen, rejected = answer_ids(template, tok, pair.turns, [pair.chosen, pair.rejected])
        room = max_seq_len - len(prompt)
        if len(chosen) > room or len(rejected) > room:
            stats["truncated_pairs"] += 1
        stats["prompt_tokens"] += len(prompt)
        stats["answer_tokens"] += min(len(chosen), room) + min(len(rejected), room)
        out.append(EncodedPair(pair.row, prompt, chosen[:room], rejected[:room]))
    return out


def prepare_pairs(data: Any, template: Template, tok: Any, seed: int) -> PairSplits:
    """Read, check, split and encode the pairs as the data config node says (train_file, eval_file or
    eval_fraction, max_seq_len, encoding, skip_bad_rows)."""
    train, skipped = read_pairs(data.train_file, data.encoding, data.skip_bad_rows)
    held: list[Pair] = []
    if data.eval_file:
        held, more = read_pairs(data.eval_file, data.encoding, data.skip_bad_rows)
        skipped += more
    elif data.eval_fraction > 0 and len(train) > 1:
        order = list(range(len(train)))
        random.Random(seed).shuffle(order)
        k = max(1, int(len(train) * data.eval_fraction))
        chosen = set(order[:k])
        held = [p for i, p in enumerate(train) if i in chosen]
        train = [p for i, p in enumerate(train) if i not in chosen]
    splits = {}
    stats: dict = {"format": "pairs", "skipped_rows": len(skipped), "skipped_examples": skipped[:20]}
    for name, pairs, path in (("train", train, data.train_file), ("eval", held, data.eval_file or data.train_file)):
        s = {"pairs": len(pairs), "truncated_pairs": 0, "prompt_tokens": 0, "answer_tokens": 0}
        splits[name] = encode_pairs(template, tok, pairs, data.max_seq_len, path, s)
        stats[name] = s
    return PairSplits(splits["train"], splits["eval"], held, stats)


def pair_summary(stats: dict) -> str:
    tr, ev = stats["train"], stats["eval"]
    return (f"data: {tr['pairs']} training pairs, {ev['pairs']} held out; {tr['truncated_pairs'] + ev['truncated_pairs']}"
            f" cut to data.max_seq_len, {stats['skipped_rows']} rows skipped")


class PairCollator:
    """A batch of B pairs as 2B right-padded rows (chosen rows first, then rejected) whose labels are
    the answer tokens only; precomputed reference log-probs ride along when the pairs have them."""

    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        rows = [(f["prompt_ids"], f[k]) for k in ("chosen_ids", "rejected_ids") for f in features]
        width = max(len(p) + len(a) for p, a in rows)
        ids = torch.full((len(rows), width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, (p, a) in enumerate(rows):
            n = len(p) + len(a)
            ids[i, :n] = torch.as_tensor([*p, *a])
            labels[i, len(p):n] = torch.as_tensor(a)
            mask[i, :n] = 1
        batch = {"input_ids": ids, "labels": labels, "attention_mask": mask}
        if "ref_chosen" in features[0]:
            batch["ref_chosen"] = torch.tensor([f["ref_chosen"] for f in features], dtype=torch.float32)
            batch["ref_rejected"] = torch.tensor([f["ref_rejected"] for f in features], dtype=torch.float32)
        return batch


def as_features(pairs: list[EncodedPair], refs: Optional[list[tuple[float, float]]] = None) -> list[dict]:
    """The pairs as the Trainer's dataset (a list of dicts), with their reference log-probs if given."""
    out = []
    for k, p in enumerate(pairs):
        f: dict = {"prompt_ids": p.prompt_ids, "chosen_ids": p.chosen_ids, "rejected_ids": p.rejected_ids}
        if refs is not None:
            f["ref_chosen"], f["ref_rejected"] = refs[k]
        out.append(f)
    return out
