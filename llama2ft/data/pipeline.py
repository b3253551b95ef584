"""The data step that `llama2ft-prepare` and `llama2ft-train` run, for every kind of rows a training
method reads (dialogues for SFT, preference pairs, KTO completions: `splits.RowKind`), in memory bounded
by a batch:

1. check: stream every file once, parse every row (no tokenizer: bad input fails fast, with file and
   row, or is skipped and counted with data.skip_bad_rows) and choose the held-out rows;
2. encode: stream again, tokenize a batch of rows at a time (the fast tokenizer's threads), mask,
   optionally pack, and append to Arrow files in a cache entry that appears only when complete.
Several training files mix by their weights (`mixing`), the same for every kind.

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
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from llama2ft.core.errors import DataError
from llama2ft.core.files import atomic_dir
from llama2ft.data import cache
from llama2ft.data.arrow_store import load_split
from llama2ft.data.mixing import copies, file_stats, file_weights, train_files
from llama2ft.data.sources import BAD, CANONICAL, bad_row
from llama2ft.data.splits import DIALOGUES, RowKind, read_examples, write_examples
from llama2ft.data.templates import Template

PREVIEW_FILE = "preview.jsonl"
EXAMPLES_FILE = "eval_examples.jsonl"


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
    train: Any  # datasets.Dataset (memory-mapped): the kind's columns (dialogues: input_ids, labels, ...)
    eval: Optional[Any]
    stats: dict
    examples: list  # the first held-out examples as text (dialogues, Pairs, Completions), for greedy answers
    preview: list[dict]  # the first data.preview_rows samples of each split, before packing


# ---------------------------------------------------------------- 1. check
def scan_file(path: str, data: Any, kind: RowKind = DIALOGUES) -> Scan:
    """Parse every row once; the first bad row raises (unless data.skip_bad_rows)."""
    scan = Scan(path)
    for item in kind.items(path, data):
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


def check_inputs(data: Any, seed: int, kind: RowKind = DIALOGUES) -> Checked:
    """Check the train and eval files; without an eval file, choose the held-out rows of the train
    files (a seeded random data.eval_fraction of their usable rows, at least one)."""
    train = [scan_file(path, data, kind) for path in train_files(data)]
    held: list[set[int]] = [set() for _ in train]
    if data.eval_file:
        return Checked(train, scan_file(data.eval_file, data, kind), held)
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
def prepare_data(data: Any, template: Template, tokenizer: Any, seed: int, kind: RowKind = DIALOGUES) -> Prepared:
    """The tokenized splits, from the cache when the same inputs were prepared before. `data`: the
    data config node (train_file, eval_file, eval_fraction, text_column, encoding, format, max_seq_len,
    train_on_inputs, skip_bad_rows, packing, cache, cache_dir, preview_rows, weights, ...); `kind`: what
    the rows are."""
    mixed = len(train_files(data)) > 1 or any(w != 1 for w in file_weights(data))
    key = cache.cache_key(_settings(data), tokenizer, (template.name, template.system),
                          seed if (not data.eval_file and data.eval_fraction > 0) or mixed else None, kind.name)
    entry = cache.cache_path(data.cache_dir, key) if data.cache else _scratch_dir() / key
    if cache.is_complete(entry):
        print(f"data: reusing the cached preprocessing in {entry}", flush=True)
    else:
        checked = check_inputs(data, seed, kind)
        with atomic_dir(entry, exists="keep") as tmp:
            _encode_all(data, template, tokenizer, checked, seed, tmp, kind)
    return _load(entry, data, kind)


def _encode_all(data: Any, template: Template, tokenizer: Any, checked: Checked, seed: int, out: Path,
                kind: RowKind) -> None:
    has_eval = checked.eval is not None or any(checked.held)
    weights = file_weights(data)
    with ThreadPoolExecutor(1, thread_name_prefix="tokenize") as pool:
        skipped = sum(len(scan.skipped) for scan in checked.train)
        splits = {"train": kind.split(out / "train.arrow", kind.new_stats(skipped), data, template, tokenizer, pool,
                                      keep_examples=False)}
        if has_eval:  # the held-out examples are kept as text for the greedy answers before/after training
            splits["eval"] = kind.split(out / "eval.arrow", kind.new_stats(len(checked.eval.skipped) if checked.eval
                                                                           else 0), data, template, tokenizer, pool,
                                        keep_examples=True)
        per_file = []
        for f, (scan, held) in enumerate(zip(checked.train, checked.held)):
            counts = copies([r for r in scan.rows if r not in held], weights[f], seed, f)
            per_file.append(file_stats(scan.path, weights[f], len(scan.rows), len(scan.skipped), len(held), counts))
            for item in kind.items(scan.path, data, check=False):
                if scan.status[item.row] == BAD:
                    continue
                canonical = scan.status[item.row] == CANONICAL
                if item.row in held:
                    splits["eval"].add(item.row, item.value, canonical, scan.path)
                else:
                    for _ in range(counts[item.row]):
                        splits["train"].add(item.row, item.value, canonical, scan.path)
        if checked.eval is not None:
            for item in kind.items(checked.eval.path, data, check=False):
                if checked.eval.status[item.row] != BAD:
                    splits["eval"].add(item.row, item.value, checked.eval.status[item.row] == CANONICAL,
                                      checked.eval.path)
        for split in splits.values():
            split.close()
    stats = splits["train"].stats
    stats["files"] = per_file
    if checked.eval is not None:  # its rows read and skipped, as for each train file (a run's provenance.json)
        stats["eval_file"] = {"file": checked.eval.path, "rows": len(checked.eval.rows),
                              "rows_skipped": len(checked.eval.skipped)}
    kind.check_split(stats, ", ".join(train_files(data)))
    if has_eval:
        stats["eval"] = splits["eval"].stats
        write_examples(out / EXAMPLES_FILE, kind, splits["eval"].examples)
    with (out / PREVIEW_FILE).open("w", encoding="utf-8") as f:
        for name, split in splits.items():
            for (path, row), ids, labels, extra in split.preview:
                sample = {"split": name, "row": row, "input_ids": ids, "labels": labels, **extra}
                if len(per_file) > 1:  # row numbers alone would be ambiguous; the path is this run's (_load)
                    sample["file_index"] = _input_paths(data).index(path)
                f.write(json.dumps(sample) + "\n")
    cache.write_stats(out, stats)


def _load(entry: Path, data: Any, kind: RowKind) -> Prepared:
    stats = _own_paths(json.loads((entry / cache.STATS_FILE).read_text(encoding="utf-8")), data)
    evals = entry / "eval.arrow"
    has_eval = evals.is_file() and bool(stats.get("eval"))
    preview, seen = [], {"train": 0, "eval": 0}
    with (entry / PREVIEW_FILE).open(encoding="utf-8") as f:
        for line in f:
            sample = json.loads(line)
            seen[sample["split"]] += 1
            if seen[sample["split"]] <= int(data.preview_rows):
                if "file_index" in sample:
                    sample["file"] = _input_paths(data)[sample.pop("file_index")]
                preview.append(sample)
    return Prepared(load_split(entry / "train.arrow"), load_split(evals) if has_eval else None, stats,
                    read_examples(entry / EXAMPLES_FILE, kind), preview)


def _input_paths(data: Any) -> list[str]:
    return [*train_files(data), *([str(data.eval_file)] if data.eval_file else [])]


def _own_paths(stats: dict, data: Any) -> dict:
    """The cache is keyed by file contents, not paths: the entry may have been written by a run whose
    files had the same contents elsewhere. Its statistics name this run's own files."""
    for entry, path in zip(stats.get("files", []), train_files(data)):
        entry["file"] = path
    if "eval_file" in stats and data.eval_file:
        stats["eval_file"]["file"] = str(data.eval_file)
    return stats


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
