"""llama2ft-prepare: the data step of training alone (read, check, tokenize, mask, statistics).

`llama2ft-train` runs the same step first. Every input problem is reported here, before a model loads.
"""
from __future__ import annotations

import sys
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from llama2ft.config.hydra_app import hydra_command
from llama2ft.config.validation import validate
from llama2ft.data.encode import summary_line, write_stats
from llama2ft.data.pipeline import Prepared, prepare_data
from llama2ft.data.preview import describe_first, write_preview
from llama2ft.data.templates import get_template
from llama2ft.model.loading import load_tokenizer


def run_prepare(cfg: DictConfig) -> Prepared:
    validate(cfg)
    tokenizer = load_tokenizer(cfg.model)
    template = get_template(cfg.template.name, cfg.template.system)
    prepared = prepare_data(cfg.data, template, tokenizer, cfg.trainer.seed)
    out_dir = Path(HydraConfig.get().runtime.output_dir)
    write_stats(prepared.stats, out_dir)
    write_preview(prepared.preview, out_dir)
    print(summary_line(prepared.stats), flush=True)
    print(describe_first(tokenizer, prepared.preview), flush=True)
    print(f"wrote {out_dir / 'data_stats.json'} and {out_dir / 'preview.jsonl'}", flush=True)
    return prepared


main = hydra_command("prepare", run_prepare)

if __name__ == "__main__":
    sys.exit(main())
