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
from llama2ft.errors import exit_on_user_error
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
    from datasets import Dataset

    template = get_template(cfg.template.name, cfg.template.system)
    columns, stats = encode_rows(train_rows, template, tokenizer, cfg.data)
    train = Dataset.from_dict(columns)
    eval_ds = None
    if eval_rows is not None:
        eval_columns, eval_stats = encode_rows(eval_rows, template, tokenizer, cfg.data)
        stats["eval"] = eval_stats
        eval_ds = Dataset.from_dict(eval_columns) if eval_stats["rows"] else None
    if not stats["rows"]:
        from llama2ft.errors import DataError

        raise DataError(f"{cfg.data.train_file}: no row has a trained token left after truncation to "
                        f"data.max_seq_len={cfg.data.max_seq_len}")
    return Prepared(train, eval_ds, stats, eval_rows)


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
