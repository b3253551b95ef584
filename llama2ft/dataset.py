"""The data step: csv rows -> parsed dialogues -> token ids with masked labels, plus statistics."""
from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from omegaconf import DictConfig

from llama2ft.csvfile import read_column
from llama2ft.dialogue import parse_rows
from llama2ft.errors import DataError
from llama2ft.templates import IGNORE_INDEX, Encoded, Template, encode_dialogue, encode_raw


@dataclass
class Rows:
    """Rows of one csv, parsed: dialogues (`format=dialogue`) or plain texts (`format=raw`)."""

    path: str
    items: list[tuple[int, Any]]  # (row number, list[Turn] or str)
    skipped: list[tuple[int, str]] = field(default_factory=list)


def read_rows(path: str, data: DictConfig) -> Rows:
    """Read and check one csv completely; bad rows raise (or are skipped with data.skip_bad_rows)."""
    cells = read_column(path, data.text_column, data.encoding)
    if data.format == "raw":
        items, skipped = [], []
        for number, text in cells:
            if text.strip():
                items.append((number, text))
            elif data.skip_bad_rows:
                skipped.append((number, "empty cell"))
            else:
                raise DataError(f"{path} row {number}: empty cell (set data.skip_bad_rows=true to skip such rows)")
        return Rows(path, items, skipped)
    parsed, skipped = parse_rows(cells, path, data.skip_bad_rows)
    if not parsed:
        raise DataError(f"{path}: no usable rows ({len(skipped)} skipped as malformed)")
    return Rows(path, parsed, skipped)


def split_rows(rows: Rows, fraction: float, seed: int) -> tuple[Rows, Optional[Rows]]:
    """Hold out a seeded random `fraction` of rows for evaluation (at least one when fraction > 0)."""
    if fraction <= 0 or len(rows.items) < 2:
        return rows, None
    order = list(range(len(rows.items)))
    random.Random(seed).shuffle(order)
    n_eval = max(1, round(len(order) * fraction))
    held = set(order[:n_eval])
    train = [it for i, it in enumerate(rows.items) if i not in held]
    evals = [it for i, it in enumerate(rows.items) if i in held]
    return Rows(rows.path, train, rows.skipped), Rows(rows.path, evals)


def encode_rows(rows: Rows, template: Template, tokenizer: Any, data: DictConfig) -> tuple[dict[str, list], dict]:
    """Token columns (`input_ids`, `labels`) and the statistics of one split."""
    input_ids: list[list[int]] = []
    labels: list[list[int]] = []
    stats = {"rows": 0, "rows_skipped": len(rows.skipped), "rows_without_trained_tokens": 0, "turns": 0,
             "tokens": 0, "trained_tokens": 0, "truncated_rows": 0, "truncated_tokens": 0, "max_len": 0}
    for _, item in rows.items:
        if data.format == "raw":
            enc: Encoded = encode_raw(tokenizer, item)
        else:
            enc = encode_dialogue(template, tokenizer, item, data.train_on_inputs)
            stats["turns"] += len(item)
        ids, labs = enc.input_ids, enc.labels
        if len(ids) > data.max_seq_len:
            stats["truncated_rows"] += 1
            stats["truncated_tokens"] += len(ids) - data.max_seq_len
            ids, labs = ids[: data.max_seq_len], labs[: data.max_seq_len]
        trained = sum(1 for x in labs if x != IGNORE_INDEX)
        if trained == 0:
            # e.g. a first question longer than max_seq_len: nothing left to learn from this row
            stats["rows_without_trained_tokens"] += 1
            continue
        stats["rows"] += 1
        stats["tokens"] += len(ids)
        stats["trained_tokens"] += trained
        stats["max_len"] = max(stats["max_len"], len(ids))
        input_ids.append(ids)
        labels.append(labs)
    return {"input_ids": input_ids, "labels": labels}, stats


def write_stats(stats: dict, out_dir: Path) -> Path:
    path = out_dir / "data_stats.json"
    path.write_text(json.dumps(stats, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


def summary_line(stats: dict) -> str:
    s = stats
    line = (f"data: {s['rows']} rows ({s['rows_skipped']} skipped), {s['turns']} turns, {s['tokens']} tokens, "
            f"{s['trained_tokens']} trained, {s['truncated_rows']} truncated, max length {s['max_len']}")
    if s["rows_without_trained_tokens"]:
        line += f"; {s['rows_without_trained_tokens']} rows dropped (no answer left within data.max_seq_len)"
    if "packed_rows" in s:
        line += f"; packed into {s['packed_rows']} rows ({s['packing_fill']:.0%} full)"
    if s.get("eval"):
        e = s["eval"]
        line += f"; eval: {e['rows']} rows, {e['tokens']} tokens"
    return line
