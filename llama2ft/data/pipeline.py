"""The data step that `llama2ft-prepare` and `llama2ft-train` run, in memory bounded by a batch:

1. check: stream every file once, parse every row (no tokenizer: bad input fails fast, with file and
   row, or is skipped and counted with data.skip_bad_rows) and choose the held-out rows;
2. encode: stream again, tokenize a batch of rows at a time (the fast tokenizer's threads), mask,
   optionally pack, and append to Arrow files in a cache entry that appears only when complete.

A run with the same inputs (file contents, tokenizer, template, data settings) memory-maps the cached
entry instead: it loads in seconds and is shared by every rank of a multi-GPU run.
"""
from __future__ import annotations

import atexit
import json
import random
import shutil
import tempfile
from array import array
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from llama2ft.core.errors import DataError
from llama2ft.core.files import atomic_dir, kill_point
from llama2ft.data import cache
from llama2ft.data.arrow_store import Packer, SplitWriter, load_split
from llama2ft.data.csv_reader import iter_column
from llama2ft.data.dialogue import DialogueFormatError, Turn, format_dialogue, is_canonical, parse_dialogue
from llama2ft.data.encode import BATCH_ROWS, EncodeOptions, finish_batch, new_stats, render_batch
from llama2ft.data.templates import Template, tokenize

EVAL_DIALOGUES_KEPT = 1000  # held-out dialogues kept for the greedy answers of the sample eval
PREVIEW_KEPT = 100  # samples of each split kept for preview.jsonl (data.preview_rows shows up to this many)
PREVIEW_FILE = "preview.jsonl"


@dataclass
class Scan:
    """What the check pass found in one file."""

    path: str
    rows: array = field(default_factory=lambda: array("q"))  # row numbers of the usable rows
    skipped: list[tuple[int, str]] = field(default_factory=list)
    # per row number: BAD, CANONICAL (written exactly as format_dialogue writes) or VALID; one byte a row
    status: bytearray = field(default_factory=lambda: bytearray(1))


BAD, CANONICAL, VALID = 0, 1, 2


@dataclass
class Prepared:
    train: Any  # datasets.Dataset (memory-mapped): input_ids, labels, length | seq_lens when packed
    eval: Optional[Any]
    stats: dict
    eval_dialogues: list[list[Turn]]  # the first held-out dialogues, for greedy answers
    preview: list[dict]  # the first data.preview_rows samples of each split, before packing


# ---------------------------------------------------------------- 1. check
def _check(cell: str, raw: bool) -> tuple[int, Optional[str]]:
    """(status, problem) of one cell, checked as data.format says."""
    if raw:
        return (CANONICAL, None) if cell.strip() else (BAD, "empty cell")
    if is_canonical(cell):  # the common case: valid, checked without building turns
        return CANONICAL, None
    try:
        parse_dialogue(cell)
        return VALID, None
    except DialogueFormatError as exc:
        return BAD, str(exc)


def scan_file(path: str, data: Any) -> Scan:
    """Parse every row once; the first bad row raises (unless data.skip_bad_rows)."""
    scan = Scan(path)
    for row, cell in iter_column(path, data.text_column, data.encoding):
        status, problem = _check(cell, data.format == "raw")
        scan.status.append(status)  # rows are numbered 1, 2, ... in file order
        if problem is None:
            scan.rows.append(row)
        elif data.skip_bad_rows:
            scan.skipped.append((row, problem))
        else:
            hint = " (set data.skip_bad_rows=true to skip such rows)" if problem == "empty cell" else ""
            raise DataError(f"{path} row {row}: {problem}{hint}")
    if not scan.rows:
        raise DataError(f"{path}: no usable rows ({len(scan.skipped)} skipped as malformed)")
    return scan


def check_inputs(data: Any, seed: int) -> tuple[Scan, Optional[Scan], set[int]]:
    """Check the train and eval files; without an eval file, choose the held-out rows of the train
    file (a seeded random data.eval_fraction of its usable rows, at least one)."""
    train = scan_file(data.train_file, data)
    if data.eval_file:
        return train, scan_file(data.eval_file, data), set()
    if data.eval_fraction <= 0 or len(train.rows) < 2:
        return train, None, set()
    order = list(range(len(train.rows)))
    random.Random(seed).shuffle(order)
    held = {train.rows[i] for i in order[: max(1, round(len(order) * data.eval_fraction))]}
    return train, None, held


# ---------------------------------------------------------------- 2. encode
def prepare_data(data: Any, template: Template, tokenizer: Any, seed: int) -> Prepared:
    """The tokenized splits, from the cache when the same inputs were prepared before. `data`: the
    data config node (train_file, eval_file, eval_fraction, text_column, encoding, format, max_seq_len,
    train_on_inputs, skip_bad_rows, packing, cache, cache_dir, preview_rows, ...)."""
    key = cache.cache_key(_settings(data), tokenizer, (template.name, template.system),
                          seed if not data.eval_file and data.eval_fraction > 0 else None)
    entry = cache.cache_path(data.cache_dir, key) if data.cache else _scratch_dir() / key
    if cache.is_complete(entry):
        print(f"data: reusing the cached preprocessing in {entry}", flush=True)
    else:
        scans = check_inputs(data, seed)
        with atomic_dir(entry, exists="keep") as tmp:
            _encode_all(data, template, tokenizer, scans, tmp)
    return _load(entry, int(data.preview_rows))


def _encode_all(data: Any, template: Template, tokenizer: Any, scans: tuple[Scan, Optional[Scan], set[int]],
                out: Path) -> None:
    train_scan, eval_scan, held = scans
    options = EncodeOptions(data.max_seq_len, data.train_on_inputs, data.format == "raw")
    has_eval = eval_scan is not None or bool(held)
    sources = [(train_scan, lambda row: "eval" if row in held else "train")]
    if eval_scan is not None:
        sources.append((eval_scan, lambda row: "eval"))
    with ThreadPoolExecutor(1, thread_name_prefix="tokenize") as pool:
        coder = (data, template, tokenizer, options, pool)
        splits = {"train": _Split(out / "train.arrow", new_stats(len(train_scan.skipped)), *coder)}
        if has_eval:
            splits["eval"] = _Split(out / "eval.arrow", new_stats(len(eval_scan.skipped) if eval_scan else 0), *coder,
                                    keep_dialogues=True)  # the sample eval's held-out questions
        for scan, split_of in sources:
            for row, cell in iter_column(scan.path, data.text_column, data.encoding):
                if scan.status[row] != BAD:
                    splits[split_of(row)].add(row, cell, scan.status[row] == CANONICAL)
        for split in splits.values():
            split.close()
    stats = splits["train"].stats
    if not stats["rows"]:
        raise DataError(f"{data.train_file}: no row has a trained token left after truncation to "
                        f"data.max_seq_len={data.max_seq_len}")
    if has_eval:
        stats["eval"] = splits["eval"].stats
        with (out / "eval_dialogues.jsonl").open("w", encoding="utf-8") as f:
            for turns in splits["eval"].dialogues:
                f.write(json.dumps(format_dialogue(turns), ensure_ascii=False) + "\n")
    with (out / PREVIEW_FILE).open("w", encoding="utf-8") as f:
        for name, split in splits.items():
            for row, ids, labels in split.preview:
                f.write(json.dumps({"split": name, "row": row, "input_ids": ids, "labels": labels}) + "\n")
    cache.write_stats(out, stats)


class _Split:
    """One split being encoded. The fast tokenizer works on one batch (in its own threads, without the
    GIL) while Python finishes the batch before it: on 2 cores that hides most of the Python time."""

    def __init__(self, path: Path, stats: dict, data: Any, template: Template, tokenizer: Any,
                 options: EncodeOptions, pool: ThreadPoolExecutor, keep_dialogues: bool = False):
        self.stats, self.keep_dialogues = stats, keep_dialogues and not options.raw
        self.template, self.tokenizer, self.options, self.pool = template, tokenizer, options, pool
        self.writer = SplitWriter(path, packed=bool(data.packing))
        self.packer = Packer(self.writer, data.max_seq_len) if data.packing else None
        self.capacity = data.max_seq_len
        self.batch: list[tuple[int, str]] = []
        self.canonical: list[bool] = []
        self.pending: Optional[tuple[list, list, Future]] = None
        self.preview: list[tuple[int, list[int], list[int]]] = []
        self.dialogues: list[list[Turn]] = []

    def add(self, row: int, cell: str, canonical: bool) -> None:
        self.batch.append((row, cell))
        self.canonical.append(canonical)
        if self.keep_dialogues and len(self.dialogues) < EVAL_DIALOGUES_KEPT:
            self.dialogues.append(parse_dialogue(cell))
        if len(self.batch) >= BATCH_ROWS:
            self._submit()

    def _submit(self) -> None:
        rendered = render_batch(self.batch, self.template, self.tokenizer, self.options, self.stats, self.canonical)
        future = self.pool.submit(tokenize, self.tokenizer, [r.text for r in rendered])
        self._finish()
        self.pending = (self.batch, rendered, future)
        self.batch, self.canonical = [], []

    def _finish(self) -> None:
        if self.pending is None:
            return
        items, rendered, future = self.pending
        self.pending = None
        batch = finish_batch(items, rendered, future.result(), self.template, self.tokenizer, self.options,
                             self.stats)
        for i in range(min(len(batch), PREVIEW_KEPT - len(self.preview))):
            ids, labels = batch.sample(i)
            self.preview.append((batch.rows[i], ids.tolist(), labels.tolist()))
        (self.packer or self.writer).add_batch(batch)
        kill_point("data-batch")

    def close(self) -> None:
        if self.batch:
            self._submit()
        self._finish()
        if self.packer is not None:
            self.packer.flush()
        rows = self.writer.close()
        if self.packer is not None:
            self.stats["packed_rows"] = rows
            self.stats["packing_fill"] = round(self.stats["tokens"] / max(1, rows * self.capacity), 4)


def _load(entry: Path, preview_rows: int) -> Prepared:
    stats = json.loads((entry / cache.STATS_FILE).read_text(encoding="utf-8"))
    evals = entry / "eval.arrow"
    has_eval = evals.is_file() and stats.get("eval", {}).get("rows", 0) > 0
    dialogues = []
    if (entry / "eval_dialogues.jsonl").is_file():
        with (entry / "eval_dialogues.jsonl").open(encoding="utf-8") as f:
            dialogues = [parse_dialogue(json.loads(line)) for line in f]
    preview, seen = [], {"train": 0, "eval": 0}
    with (entry / PREVIEW_FILE).open(encoding="utf-8") as f:
        for line in f:
            sample = json.loads(line)
            seen[sample["split"]] += 1
            if seen[sample["split"]] <= preview_rows:
                preview.append(sample)
    return Prepared(load_split(entry / "train.arrow"), load_split(evals) if has_eval else None, stats, dialogues,
                    preview)


def _settings(data: Any) -> dict:
    """The data config as a plain dict (a Hydra node, or any object with the same attributes)."""
    if hasattr(data, "_metadata"):
        from omegaconf import OmegaConf

        return OmegaConf.to_container(data, resolve=True)
    return dict(vars(data))


def _scratch_dir() -> Path:
    """Where data.cache=false puts this process's preprocessing (removed at exit)."""
    global _SCRATCH
    if _SCRATCH is None:
        _SCRATCH = Path(tempfile.mkdtemp(prefix="llama2ft-data-"))
        atexit.register(shutil.rmtree, _SCRATCH, True)
    return _SCRATCH


_SCRATCH: Optional[Path] = None
