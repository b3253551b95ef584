"""Parsed rows -> token ids and labels through the templates, a batch at a time (the fast tokenizer
encodes a batch in its own threads), with the statistics of each split (`data_stats.json`)."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

from llama2ft.data.rows import Rows
from llama2ft.data.templates import IGNORE_INDEX, Template, encode_rendered, render_raw

BATCH_ROWS = 1024  # rows tokenized per call: large enough for the tokenizer's threads, small in memory


@dataclass(frozen=True)
class EncodeOptions:
    max_seq_len: int
    train_on_inputs: bool = False
    raw: bool = False  # plain texts (data.format=raw) instead of dialogues


@dataclass
class Sample:
    row: int  # the csv row number, as error messages give it
    input_ids: list[int]
    labels: list[int]


def new_stats(skipped: int = 0) -> dict:
    return {"rows": 0, "rows_skipped": skipped, "rows_without_trained_tokens": 0, "turns": 0, "tokens": 0,
            "trained_tokens": 0, "truncated_rows": 0, "truncated_tokens": 0, "max_len": 0}


def encode_batch(items: list[tuple[int, Any]], template: Template, tokenizer: Any, options: EncodeOptions,
                 stats: dict) -> list[Sample]:
    """Samples of (row number, turns or text) items, cut to max_seq_len; rows left with nothing to
    train are dropped. Counts into `stats`."""
    if options.raw:
        rendered = [render_raw(tokenizer, text) for _, text in items]
    else:
        rendered = [template.render(turns, tokenizer) for _, turns in items]
        stats["turns"] += sum(len(turns) for _, turns in items)
    samples = []
    for (row, _), enc in zip(items, encode_rendered(tokenizer, rendered, options.train_on_inputs)):
        ids, labels = enc.input_ids, enc.labels
        if len(ids) > options.max_seq_len:
            stats["truncated_rows"] += 1
            stats["truncated_tokens"] += len(ids) - options.max_seq_len
            ids, labels = ids[: options.max_seq_len], labels[: options.max_seq_len]
        trained = len(labels) - labels.count(IGNORE_INDEX)
        if trained == 0:
            # e.g. a first question longer than max_seq_len: nothing left to learn from this row
            stats["rows_without_trained_tokens"] += 1
            continue
        stats["rows"] += 1
        stats["tokens"] += len(ids)
        stats["trained_tokens"] += trained
        stats["max_len"] = max(stats["max_len"], len(ids))
        samples.append(Sample(row, ids, labels))
    return samples


def encode_stream(items: Iterable[tuple[int, Any]], template: Template, tokenizer: Any, options: EncodeOptions,
                  stats: dict, batch_rows: int = BATCH_ROWS) -> Iterator[Sample]:
    """`encode_batch` over a stream of items, `batch_rows` at a time."""
    batch: list[tuple[int, Any]] = []
    for item in items:
        batch.append(item)
        if len(batch) >= batch_rows:
            yield from encode_batch(batch, template, tokenizer, options, stats)
            batch = []
    if batch:
        yield from encode_batch(batch, template, tokenizer, options, stats)


def encode_rows(rows: Rows, template: Template, tokenizer: Any, *, max_seq_len: int, train_on_inputs: bool = False,
                raw: bool = False) -> tuple[dict[str, list], dict]:
    """Token columns (`input_ids`, `labels`) and the statistics of rows held in memory."""
    stats = new_stats(len(rows.skipped))
    samples = list(encode_stream(rows.items, template, tokenizer, EncodeOptions(max_seq_len, train_on_inputs, raw),
                                 stats))
    return {"input_ids": [s.input_ids for s in samples], "labels": [s.labels for s in samples]}, stats


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
