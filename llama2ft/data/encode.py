"""Parsed rows -> token columns (`input_ids`, `labels`) through the templates, with the statistics of
the split (`data_stats.json`)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from llama2ft.data.rows import Rows
from llama2ft.data.templates import IGNORE_INDEX, Encoded, Template, encode_dialogue, encode_raw


def encode_rows(rows: Rows, template: Template, tokenizer: Any, *, max_seq_len: int, train_on_inputs: bool = False,
                raw: bool = False) -> tuple[dict[str, list], dict]:
    """Token columns (`input_ids`, `labels`) and the statistics of one split; rows are cut to
    `max_seq_len`, and rows left with nothing to train are dropped (and counted)."""
    input_ids: list[list[int]] = []
    labels: list[list[int]] = []
    stats = {"rows": 0, "rows_skipped": len(rows.skipped), "rows_without_trained_tokens": 0, "turns": 0,
             "tokens": 0, "trained_tokens": 0, "truncated_rows": 0, "truncated_tokens": 0, "max_len": 0}
    for _, item in rows.items:
        if raw:
            enc: Encoded = encode_raw(tokenizer, item)
        else:
            enc = encode_dialogue(template, tokenizer, item, train_on_inputs)
            stats["turns"] += len(item)
        ids, labs = enc.input_ids, enc.labels
        if len(ids) > max_seq_len:
            stats["truncated_rows"] += 1
            stats["truncated_tokens"] += len(ids) - max_seq_len
            ids, labs = ids[:max_seq_len], labs[:max_seq_len]
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
