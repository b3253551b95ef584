"""Rows -> token ids and labels through the templates, a batch at a time: the fast tokenizer encodes a
batch in its own threads, and the batch's ids and labels are flat int32 arrays (no per-token Python
objects), with the statistics of each split (`data_stats.json`)."""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Optional

import numpy as np

from llama2ft.data.rows import Rows
from llama2ft.data.templates import IGNORE_INDEX, Rendered, Template, eos_ranges, render_raw, token_ranges, tokenize

BATCH_ROWS = 1024  # rows tokenized per call: large enough for the tokenizer's threads, small in memory


@dataclass(frozen=True)
class EncodeOptions:
    max_seq_len: int
    train_on_inputs: bool = False
    raw: bool = False  # plain texts (data.format=raw) instead of dialogues


@dataclass
class EncodedBatch:
    """The kept rows of a batch: row i's tokens are ids[offsets[i]:offsets[i + 1]] (labels alike)."""

    rows: list[int]  # csv row numbers, as error messages give them
    ids: np.ndarray
    labels: np.ndarray
    offsets: np.ndarray

    def __len__(self) -> int:
        return len(self.rows)

    def sample(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        a, b = self.offsets[i], self.offsets[i + 1]
        return self.ids[a:b], self.labels[a:b]


def new_stats(skipped: int = 0) -> dict:
    return {"rows": 0, "rows_skipped": skipped, "rows_without_trained_tokens": 0, "turns": 0, "tokens": 0,
            "trained_tokens": 0, "truncated_rows": 0, "truncated_tokens": 0, "max_len": 0}


def render_batch(items: list[tuple[int, Any]], template: Template, tokenizer: Any, options: EncodeOptions,
                 stats: dict, canonical: Optional[list[Optional[bool]]] = None) -> list[Rendered]:
    """The texts and trained spans of rows given as (row number, cell or turns); `canonical`: per row,
    what the check pass found about its cell (see `Template.render_cell`)."""
    if options.raw:
        return [render_raw(tokenizer, text) for _, text in items]
    out = []
    for k, (_, item) in enumerate(items):
        if isinstance(item, str):  # a checked community-format cell
            stats["turns"] += item.count("</s>")  # one closing marker per turn
            out.append(template.render_cell(item, tokenizer, canonical[k] if canonical else None))
        else:
            stats["turns"] += len(item)
            out.append(_for_row(template, item, stats).render(item, tokenizer))
    return out


def _for_row(template: Template, turns: Any, stats: dict) -> Template:
    """The template with a row's own system prompt (a `shapes.Dialogue`'s system message), if it has one."""
    system = getattr(turns, "system", None)
    if system is None:
        return template
    stats["rows_with_system"] = stats.get("rows_with_system", 0) + 1
    return template if system == template.system else type(template)(system)


def finish_batch(items: list[tuple[int, Any]], rendered: list[Rendered], encodings: list[Any], template: Template,
                 tokenizer: Any, options: EncodeOptions, stats: dict) -> EncodedBatch:
    """Ids and labels of a tokenized batch, cut to max_seq_len; rows left with nothing to train are
    dropped. Counts into `stats`."""
    limit, eos = options.max_seq_len, tokenizer.eos_token_id
    every_token = options.train_on_inputs or options.raw  # raw text: BOS + text + EOS, all trained
    rows, kept, ranges, lengths = [], [], [], []
    truncated_rows = truncated_tokens = dropped = tokens = trained_tokens = 0
    for (row, _), enc, r in zip(items, encodings, rendered):
        ids = enc.ids  # a new list on every access: taken once
        full = len(ids)
        if every_token:
            spans = [(0, full)]
        elif template.spans_end_with_eos:
            spans = eos_ranges(ids, enc, r.trained, eos)
        else:
            spans = token_ranges(enc, r.trained)
        if full > limit:
            truncated_rows += 1
            truncated_tokens += full - limit
            spans = [(a, min(b, limit)) for a, b in spans if a < limit]
            ids = ids[:limit]
        trained = sum(b - a for a, b in spans)
        if not trained:  # e.g. a first question longer than max_seq_len: nothing left to learn from this row
            dropped += 1
            continue
        tokens += len(ids)
        trained_tokens += trained
        rows.append(row)
        kept.append(ids)
        ranges.append(spans)
        lengths.append(len(ids))
    stats["truncated_rows"] += truncated_rows
    stats["truncated_tokens"] += truncated_tokens
    stats["rows_without_trained_tokens"] += dropped
    stats["rows"] += len(rows)
    stats["tokens"] += tokens
    stats["trained_tokens"] += trained_tokens
    stats["max_len"] = max(stats["max_len"], max(lengths, default=0))
    offsets = np.zeros(len(kept) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    flat = np.fromiter(itertools.chain.from_iterable(kept), dtype=np.int32, count=int(offsets[-1]))
    labels = np.full_like(flat, IGNORE_INDEX)
    for start, spans in zip(offsets.tolist(), ranges):
        for a, b in spans:
            labels[start + a:start + b] = flat[start + a:start + b]
    return EncodedBatch(rows, flat, labels, offsets)


def encode_batch(items: list[tuple[int, Any]], template: Template, tokenizer: Any, options: EncodeOptions,
                 stats: dict) -> EncodedBatch:
    """Rows given as (row number, cell or turns): rendered, tokenized (in the fast tokenizer's threads)
    and finished."""
    rendered = render_batch(items, template, tokenizer, options, stats)
    return finish_batch(items, rendered, tokenize(tokenizer, [r.text for r in rendered]), template, tokenizer,
                        options, stats)


def encode_stream(items: Iterable[tuple[int, Any]], template: Template, tokenizer: Any, options: EncodeOptions,
                  stats: dict, batch_rows: int = BATCH_ROWS) -> Iterator[EncodedBatch]:
    """`encode_batch` over a stream of items, `batch_rows` at a time."""
    batch: list[tuple[int, Any]] = []
    for item in items:
        batch.append(item)
        if len(batch) >= batch_rows:
            yield encode_batch(batch, template, tokenizer, options, stats)
            batch = []
    if batch:
        yield encode_batch(batch, template, tokenizer, options, stats)


def encode_rows(rows: Rows, template: Template, tokenizer: Any, *, max_seq_len: int, train_on_inputs: bool = False,
                raw: bool = False) -> tuple[dict[str, list], dict]:
    """Token columns (`input_ids`, `labels`, as lists) and the statistics of rows held in memory."""
    stats = new_stats(len(rows.skipped))
    columns: dict[str, list] = {"input_ids": [], "labels": []}
    for batch in encode_stream(rows.items, template, tokenizer, EncodeOptions(max_seq_len, train_on_inputs, raw),
                               stats):
        for i in range(len(batch)):
            ids, labels = batch.sample(i)
            columns["input_ids"].append(ids.tolist())
            columns["labels"].append(labels.tolist())
    return columns, stats


def summary_line(stats: dict) -> str:
    s = stats
    line = (f"data: {s['rows']} rows ({s['rows_skipped']} skipped), {s['turns']} turns, {s['tokens']} tokens, "
            f"{s['trained_tokens']} trained, {s['truncated_rows']} truncated, max length {s['max_len']}")
    if s["rows_without_trained_tokens"]:
        line += f"; {s['rows_without_trained_tokens']} rows dropped (no answer left within data.max_seq_len)"
    if s.get("rows_with_system"):
        line += f"; {s['rows_with_system']} rows with their own system prompt"
    if "packed_rows" in s:
        line += f"; packed into {s['packed_rows']} rows ({s['packing_fill']:.0%} full)"
    if s.get("eval"):
        e = s["eval"]
        line += f"; eval: {e['rows']} rows, {e['tokens']} tokens"
    return line
