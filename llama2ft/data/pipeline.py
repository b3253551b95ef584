"""The data step that `llama2ft-prepare` and `llama2ft-train` run: read and check the files (no
tokenizer needed, so bad input fails before anything loads), then tokenize, mask and pack, reusing
the cache when the same inputs were prepared before."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from omegaconf import DictConfig, OmegaConf

from llama2ft.core.errors import DataError
from llama2ft.data import cache
from llama2ft.data.encode import encode_rows
from llama2ft.data.rows import Rows, read_rows, split_rows
from llama2ft.data.templates import Template


@dataclass
class Prepared:
    train: Any  # datasets.Dataset with input_ids, labels (and position_ids when packed)
    eval: Optional[Any]
    stats: dict
    eval_rows: Optional[Rows]  # parsed held-out rows (for greedy answers)


def read_inputs(data: DictConfig, seed: int) -> tuple[Rows, Optional[Rows]]:
    """Read and check the train and eval files; without an eval file, hold out data.eval_fraction."""
    train = read_rows(data.train_file, data)
    if data.eval_file:
        return train, read_rows(data.eval_file, data)
    return split_rows(train, data.eval_fraction, seed)


def tokenize_inputs(data: DictConfig, template: Template, tokenizer: Any, train_rows: Rows,
                    eval_rows: Optional[Rows], seed: int) -> Prepared:
    """Tokenized (and, with data.packing, packed) datasets, from the cache when possible."""
    entry = None
    if data.cache:
        split_seed = seed if not data.eval_file and data.eval_fraction > 0 else None
        key = cache.cache_key(OmegaConf.to_container(data, resolve=True), tokenizer,
                              (template.name, template.system), split_seed)
        entry = cache.cache_path(data.cache_dir, key)
    hit = cache.load(entry) if entry is not None else None
    if hit is not None:
        print(f"data: reusing the cached preprocessing in {entry}", flush=True)
        return Prepared(hit[0], hit[1], hit[2], eval_rows)
    train, eval_ds, stats = _build(data, template, tokenizer, train_rows, eval_rows)
    if entry is not None:
        cache.save(entry, train, eval_ds, stats)
    return Prepared(train, eval_ds, stats, eval_rows)


def _build(data: DictConfig, template: Template, tokenizer: Any, train_rows: Rows,
           eval_rows: Optional[Rows]) -> tuple:
    from datasets import Dataset

    options = {"max_seq_len": data.max_seq_len, "train_on_inputs": data.train_on_inputs, "raw": data.format == "raw"}
    columns, stats = encode_rows(train_rows, template, tokenizer, **options)
    if not stats["rows"]:
        raise DataError(f"{data.train_file}: no row has a trained token left after truncation to "
                        f"data.max_seq_len={data.max_seq_len}")
    train = Dataset.from_dict(_maybe_pack(data, columns, stats))
    eval_ds = None
    if eval_rows is not None:
        eval_columns, eval_stats = encode_rows(eval_rows, template, tokenizer, **options)
        stats["eval"] = eval_stats
        if eval_stats["rows"]:
            eval_ds = Dataset.from_dict(_maybe_pack(data, eval_columns, eval_stats))
    return train, eval_ds, stats


def _maybe_pack(data: DictConfig, columns: dict, stats: dict) -> dict:
    if not data.packing:
        return columns
    from llama2ft.data.packing import pack_columns

    packed = pack_columns(columns["input_ids"], columns["labels"], data.max_seq_len)
    stats["packed_rows"] = len(packed["input_ids"])
    stats["packing_fill"] = round(stats["tokens"] / max(1, stats["packed_rows"] * data.max_seq_len), 4)
    return packed
