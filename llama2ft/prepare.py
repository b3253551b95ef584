"""llama2ft-prepare: the data step alone (read, check, tokenize, mask, statistics).

`llama2ft-train` runs the same step first. Every input problem is reported here, before a model loads.
"""
from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from llama2ft import CONFIG_DIR
from llama2ft.config import register_schema, validate
from llama2ft.dataset import Rows, encode_rows, read_rows, split_rows, summary_line, write_stats
from llama2ft.errors import DataError, exit_on_user_error
from llama2ft.templates import get_template

log = logging.getLogger(__name__)


@dataclass
class Prepared:
    train: Any  # datasets.Dataset with input_ids, labels
    eval: Optional[Any]
    stats: dict
    eval_rows: Optional[Rows]  # parsed held-out rows (for greedy answers)


def read_inputs(cfg: DictConfig) -> tuple[Rows, Optional[Rows]]:
    """Read and check the train and eval csv files (no tokenizer needed: fails fast on bad input)."""
    data = cfg.data
    train = read_rows(data.train_file, data)
    if data.eval_file:
        return train, read_rows(data.eval_file, data)
    return split_rows(train, data.eval_fraction, cfg.trainer.seed)


def tokenize_inputs(cfg: DictConfig, tokenizer: Any, train_rows: Rows, eval_rows: Optional[Rows]) -> Prepared:
    """Tokenized (and, with data.packing, packed) datasets, from the cache when the same inputs were
    prepared before."""
    from llama2ft import cache

    entry = cache.cache_path(cfg, cache.cache_key(cfg, tokenizer)) if cfg.data.cache else None
    hit = cache.load(entry) if entry is not None else None
    if hit is not None:
        print(f"data: reusing the cached preprocessing in {entry}", flush=True)
        return Prepared(hit[0], hit[1], hit[2], eval_rows)
    train, eval_ds, stats = _build(cfg, tokenizer, train_rows, eval_rows)
    if entry is not None:
        cache.save(entry, train, eval_ds, stats)
    return Prepared(train, eval_ds, stats, eval_rows)


def _build(cfg: DictConfig, tokenizer: Any, train_rows: Rows, eval_rows: Optional[Rows]) -> tuple:
    from datasets import Dataset

    template = get_template(cfg.template.name, cfg.template.system)
    columns, stats = encode_rows(train_rows, template, tokenizer, cfg.data)
    if not stats["rows"]:
        raise DataError(f"{cfg.data.train_file}: no row has a trained token left after truncation to "
                        f"data.max_seq_len={cfg.data.max_seq_len}")
    train = Dataset.from_dict(_maybe_pack(cfg, columns, stats))
    eval_ds = None
    if eval_rows is not None:
        eval_columns, eval_stats = encode_rows(eval_rows, template, tokenizer, cfg.data)
        stats["eval"] = eval_stats
        if eval_stats["rows"]:
            eval_ds = Dataset.from_dict(_maybe_pack(cfg, eval_columns, eval_stats))
    return train, eval_ds, stats


def _maybe_pack(cfg: DictConfig, columns: dict, stats: dict) -> dict:
    if not cfg.data.packing:
        return columns
    from llama2ft.packing import pack_columns

    packed = pack_columns(columns["input_ids"], columns["labels"], cfg.data.max_seq_len)
    stats["packed_rows"] = len(packed["input_ids"])
    stats["packing_fill"] = round(stats["tokens"] / max(1, stats["packed_rows"] * cfg.data.max_seq_len), 4)
    return packed


def run_prepare(cfg: DictConfig) -> Prepared:
    from llama2ft.modeling import load_tokenizer

    validate(cfg)
    train_rows, eval_rows = read_inputs(cfg)
    tokenizer = load_tokenizer(cfg.model)
    prepared = tokenize_inputs(cfg, tokenizer, train_rows, eval_rows)
    out_dir = Path(HydraConfig.get().runtime.output_dir)
    write_stats(prepared.stats, out_dir)
    print(summary_line(prepared.stats), flush=True)
    print(f"wrote {out_dir / 'data_stats.json'}", flush=True)
    return prepared


register_schema()


@hydra.main(config_path=str(CONFIG_DIR), config_name="prepare", version_base="1.3")
@exit_on_user_error
def _hydra_main(cfg: DictConfig) -> None:
    run_prepare(cfg)


def main() -> None:
    _hydra_main()


if __name__ == "__main__":
    sys.exit(main())
