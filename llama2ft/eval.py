"""llama2ft-eval: ask one or more models a question set and compare how (and whether) they answer in
Chinese; or `task=loss` for loss and perplexity on a community-format csv, masked as in training.

    llama2ft-eval models=[outputs/train/RUN] output=outputs/eval/run1
    llama2ft-eval 'models=[{name:base,path:/models/Llama-2-7b-chat-hf},{name:tuned,run:outputs/train/RUN}]'
    llama2ft-eval task=loss models=[outputs/train/RUN] data_file=data/sample/dev.csv

Answers go to OUTPUT/answers.jsonl as they are made; running again with the same output= resumes.
"""
from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path
from typing import Optional

from omegaconf import DictConfig

from llama2ft.config.hydra_app import TEXT_KEYS, hydra_command
from llama2ft.core.errors import ConfigError
from llama2ft.data.templates import TEMPLATE_NAMES
from llama2ft.evaluation.questions import COMMUNITY_SYSTEM_PROMPT
from llama2ft.evaluation.runner import answer_questions, model_specs, question_set, score_loss
from llama2ft.inference.model_choice import ModelSpec
from llama2ft.inference.sampling import Sampling
from llama2ft.inference.settings import engine_problems


def run_eval(cfg: DictConfig) -> dict:
    problems = []
    if cfg.task not in ("generate", "loss"):
        problems.append(f"task={cfg.task!r}: must be generate or loss")
    template = cfg.prompt_template
    if template not in (None, "model", *TEMPLATE_NAMES):
        problems.append(f"prompt_template={template!r}: must be one of {', '.join(TEMPLATE_NAMES)} or model")
    if template is None:
        template = "llama2_inst" if cfg.task == "generate" else "model"
    if not 0 < float(cfg.chinese_threshold) < 1:
        problems.append(f"chinese_threshold={cfg.chinese_threshold}: must be in (0, 1)")
    if int(cfg.batch_size) < 1:
        problems.append(f"batch_size={cfg.batch_size}: must be >= 1")
    problems += engine_problems(cfg.max_batch, cfg.engine)
    if cfg.task == "loss" and cfg.engine != "transformers":
        problems.append(f"engine={cfg.engine}: task=loss runs on engine=transformers")
    if cfg.task == "loss" and (cfg.data_file is None or not Path(cfg.data_file).is_file()):
        problems.append(f"data_file={cfg.data_file!r}: task=loss needs a community-format csv (file not found)")
    if cfg.questions is not None and not Path(cfg.questions).is_file():
        problems.append(f"questions={cfg.questions!r}: file not found")
    specs, model_problems = model_specs(list(cfg.models), _base_spec(cfg, template))
    samp = Sampling.of(cfg)
    problems += model_problems + samp.problems()
    if problems:
        raise ConfigError(problems)
    out = Path(cfg.output).expanduser()
    if cfg.task == "loss":
        return score_loss(specs, str(cfg.data_file), int(cfg.max_seq_len), int(cfg.batch_size), out)
    questions = question_set(cfg.questions, cfg.encoding)
    return answer_questions(specs, questions, samp, out, int(cfg.batch_size), float(cfg.chinese_threshold),
                            int(cfg.max_batch), str(cfg.engine))


def _base_spec(cfg: DictConfig, template: str) -> ModelSpec:
    """The model keys every `models` entry starts from: the config's, with prompt_template= as the template
    and the community's system prompt for its llama2_inst evaluation."""
    system: Optional[str] = cfg.system
    if system is None and template == "llama2_inst" and cfg.task == "generate":
        system = COMMUNITY_SYSTEM_PROMPT
    return replace(ModelSpec.from_config(cfg), template=None if template == "model" else template, system=system)


main = hydra_command("eval", run_eval, text_keys=TEXT_KEYS)

if __name__ == "__main__":
    sys.exit(main())
