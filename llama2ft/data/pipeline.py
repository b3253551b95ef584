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
import bisect
import itertools
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
from llama2ft.data.dialogue import Turn, format_dialogue, parse_dialogue
from llama2ft.data.encode import BATCH_ROWS, EncodeOptions, finish_batch, new_stats, render_batch
from llama2ft.data.mixing import copies, file_stats, file_weights, train_files
from llama2ft.data.sources import BAD, CANONICAL, bad_row, iter_items
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


@dataclass
class Checked:
    """The check pass over every input: the train files, the eval file, and per train file the rows
    held out for evaluation (without an eval file)."""

    train: list[Scan]
    eval: Optional[Scan]
    held: list[set[int]]


@dataclass
class Prepared:
    train: Any  # datasets.Dataset (memory-mapped): input_ids, labels, length | seq_lens when packed
    eval: Optional[Any]
    stats: dict
    eval_dialogues: list[list[Turn]]  # the first held-out dialogues, for greedy answers
    preview: list[dict]  # the first data.preview_rows samples of each split, before packing


# ---------------------------------------------------------------- 1. check
def scan_file(path: str, data: Any) -> Scan:
    """Parse every row once; the first bad row raises (unless data.skip_bad_rows)."""
    scan = Scan(path)
    for item in iter_items(path, data):
        scan.status.append(item.status)  # rows are numbered 1, 2, ... in file order
        if item.problem is None:
            scan.rows.append(item.row)
        elif data.skip_bad_rows:
            scan.skipped.append((item.row, f"{item.where}: {item.problem}"))
        else:
            raise bad_row(path, item)
    if not scan.rows:
        raise DataError(f"{path}: no usable rows ({len(scan.skipped)} skipped as malformed)")
    return scan


def check_inputs(data: Any, seed: int) -> Checked:
    """Check the train and eval files; without an eval file, choose the held-out rows of the train
    files (a seeded random data.eval_fraction of their usable rows, at least one)."""
    train = [scan_file(path, data) for path in train_files(data)]
    held: list[set[int]] = [set() for _ in train]
    if data.eval_file:
        return Checked(train, scan_file(data.eval_file, data), held)
    total = sum(len(scan.rows) for scan in train)
    if data.eval_fraction <= 0 or total < 2:
        return Checked(train, None, held)
    order = list(range(total))
    random.Random(seed).shuffle(order)
    starts = list(itertools.accumulate((len(scan.rows) for scan in train), initial=0))
    for i in order[: max(1, round(total * data.eval_fraction))]:
        f = bisect.bisect_right(starts, i) - 1
        held[f].add(train[f].rows[i - starts[f]])
    return Checked(train, None, held)


# ---------------------------------------------------------------- 2. encode
def prepare_data(data: Any, template: Template, tokenizer: Any, seed: int) -> Prepared:
    """The tokenized splits, from the cache when the same inputs were prepared before. `data`: the
    data config node (train_file, eval_file, eval_fraction, text_column, encoding, format, max_seq_len,
    train_on_inputs, skip_bad_rows, packing, cache, cache_dir, preview_rows, weights, ...)."""
    mixed = len(train_files(data)) > 1 or any(w != 1 for w in file_weights(data))
    key = cache.cache_key(_settings(data), tokenizer, (template.name, template.system),
                          seed if (not data.eval_file and data.eval_fraction > 0) or mixed else None)
    entry = cache.cache_path(data.cache_dir, key) if data.cache else _scratch_dir() / key
    if cache.is_complete(entry):
        print(f"data: reusing the cached preprocessing in {entry}", flush=True)
    else:
        checked = check_inputs(data, seed)
        with atomic_dir(entry, exists="keep") as tmp:
            _encode_all(data, template, tokenizer, checked, seed, tmp)
    return _load(entry, int(data.preview_rows))


def _encode_all(data: Any, template: Template, tokenizer: Any, checked: Checked, seed: int, out: Path) -> None:
    options = EncodeOptions(data.max_seq_len, data.train_on_inputs, data.format == "raw")
    has_eval = checked.eval is not None or any(checked.held)
    weights = file_weights(data)
    with ThreadPoolExecutor(1, thread_name_prefix="tokenize") as pool:
        coder = (data, template, tokenizer, options, pool)
        skipped = sum(len(scan.skipped) for scan in checked.train)
        splits = {"train": _Split(out / "train.arrow", new_stats(skipped), *coder)}
        if has_eval:
            splits["eval"] = _Split(out / "eval.arrow", new_stats(len(checked.eval.skipped) if checked.eval else 0),
                                    *coder, keep_dialogues=True)  # the sample eval's held-out questions
        per_file = []
        for f, (scan, held) in enumerate(zip(checked.train, checked.held)):
            counts = copies([r for r in scan.rows if r not in held], weights[f], seed, f)
            per_file.append(file_stats(scan.path, weights[f], len(scan.rows), len(scan.skipped), len(held), counts))
            for item in iter_items(scan.path, data, check=False):
                if scan.status[item.row] == BAD:
                    continue
                canonical = scan.status[item.row] == CANONICAL
                if item.row in held:
                    splits["eval"].add(item.row, item.value, canonical, scan.path)
                else:
                    for _ in range(counts[item.row]):
                        splits["train"].add(item.row, item.value, canonical, scan.path)
        if checked.eval is not None:
            for item in iter_items(checked.eval.path, data, check=False):
                if checked.eval.status[item.row] != BAD:
                    splits["eval"].add(item.row, item.value, checked.eval.status[item.row] == CANONICAL,
                                      checked.eval.path)
        for split in splits.values():
            split.close()
    stats = splits["train"].stats
    stats["files"] = per_file
    if not stats["rows"]:
        raise DataError(f"{', '.join(train_files(data))}: no row has a trained token left after truncation to "
                        f"data.max_seq_len={data.max_seq_len}")
    if has_eval:
        stats["eval"] = splits["eval"].stats
        with (out / "eval_dialogues.jsonl").open("w", encoding="utf-8") as f:
            for turns in splits["eval"].dialogues:
                f.write(json.dumps(format_dialogue(turns), ensure_ascii=False) + "\n")
    with (out / PREVIEW_FILE).open("w", encoding="utf-8") as f:
        for name, split in splits.items():
            for (path, row), ids, labels in split.preview:
                sample = {"split": name, "row": row, "input_ids": ids, "labels": labels}
                if len(per_file) > 1:  # row numbers alone would be ambiguous
                    sample["file"] = path
                f.write(json.dumps(sample) + "\n")
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
        self.batch: list[tuple[int, Any]] = []  # (place in the batch, cell or dialogue)
        self.where: list[tuple[str, int]] = []  # (file, row) of each row of the batch
        self.canonical: list[bool] = []
        self.pending: Optional[tuple[list, list, Future]] = None
        self.preview: list[tuple[tuple[str, int], list[int], list[int]]] = []
        self.dialogues: list[list[Turn]] = []

    def add(self, row: int, value: Any, canonical: bool, path: str) -> None:
        """One row: a checked cell or a Dialogue (see `sources.iter_items`)."""
        self.batch.append((len(self.batch), value))
        self.where.append((path, row))
        self.canonical.append(canonical)
        if self.keep_dialogues and len(self.dialogues) < EVAL_DIALOGUES_KEPT:
            self.dialogues.append(parse_dialogue(value) if isinstance(value, str) else list(value))
        if len(self.batch) >= BATCH_ROWS:
            self._submit()

    def _submit(self) -> None:
        rendered = render_batch(self.batch, self.template, self.tokenizer, self.options, self.stats, self.canonical)
        future = self.pool.submit(tokenize, self.tokenizer, [r.text for r in rendered])
        self._finish()
        self.pending = (self.batch, self.where, rendered, future)
        self.batch, self.where, self.canonical = [], [], []

    def _finish(self) -> None:
        if self.pending is None:
            return
        items, where, rendered, future = self.pending
        self.pending = None
        batch = finish_batch(items, rendered, future.result(), self.template, self.tokenizer, self.options,
                             self.stats)
        for i in range(min(len(batch), PREVIEW_KEPT - len(self.preview))):
            ids, labels = batch.sample(i)
            self.preview.append((where[batch.rows[i]], ids.tolist(), labels.tolist()))
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
