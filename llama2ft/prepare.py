"""llama2ft-prepare: the data step of training alone (read, check, tokenize, mask, statistics).

`llama2ft-train` runs the same step first, for the rows its method reads (dialogues, or preference
pairs/completions with method=dpo|orpo|simpo|kto). Every input problem is reported here, before a model loads.
"""
from __future__ import annotations

import sys
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from llama2ft.config.hydra_app import hydra_command
from llama2ft.config.validation import validate
from llama2ft.data.pipeline import Prepared, prepare_data
from llama2ft.data.preview import describe_first, write_preview
from llama2ft.data.templates import get_template
from llama2ft.model.loading import load_tokenizer
from llama2ft.model.run_folder import RunDir
from llama2ft.training.methods import get_method, method_problems, register_schemas


def run_prepare(cfg: DictConfig) -> Prepared:
    validate(cfg, method_problems(cfg))
    method = get_method(cfg.method.name)
    tokenizer = load_tokenizer(cfg.model)
    template = get_template(cfg.template.name, cfg.template.system)
    prepared = prepare_data(cfg.data, template, tokenizer, cfg.trainer.seed, method.rows)
    run = RunDir(Path(HydraConfig.get().runtime.output_dir))
    run.write_stats(prepared.stats)
    write_preview(prepared.preview, run.preview)
    print(method.rows.summary(prepared.stats), flush=True)
    print(describe_first(tokenizer, prepared.preview), flush=True)
    print(f"wrote {run.stats} and {run.preview}", flush=True)
    return prepared


register_schemas()
main = hydra_command("prepare", run_prepare)

if __name__ == "__main__":
    sys.exit(main())
