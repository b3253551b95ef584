"""llama2ft-eval: ask one or more models a question set and compare how (and whether) they answer in
Chinese; or `task=loss` for loss and perplexity on a community-format csv, masked as in training.

    llama2ft-eval models=[outputs/train/RUN] output=outputs/eval/run1
    llama2ft-eval 'models=[{name:base,path:/models/Llama-2-7b-chat-hf},{name:tuned,run:outputs/train/RUN}]'
    llama2ft-eval task=loss models=[outputs/train/RUN] data_file=data/sample/dev.csv
    llama2ft-eval task=benchmark models=[RUN] benchmark_data.ceval=DIR benchmark_data.cmmlu=DIR
    llama2ft-eval task=[generate,benchmark] benchmark_data=sample num_fewshot=2 models=[...]   # one report

Answers go to OUTPUT/answers.jsonl as they are made, lm-eval's results to OUTPUT/lm_eval/MODEL/; running
again with the same output= resumes.
"""
from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path
from typing import Optional

from omegaconf import DictConfig, ListConfig, OmegaConf

from llama2ft.config.hydra_app import TEXT_KEYS, hydra_command
from llama2ft.core.errors import ConfigError
from llama2ft.data.templates import TEMPLATE_NAMES
from llama2ft.evaluation.benchmark_runner import benchmark_problems, plan_benchmarks, run_benchmarks
from llama2ft.evaluation.questions import COMMUNITY_SYSTEM_PROMPT
from llama2ft.evaluation.runner import answer_questions, model_specs, question_set, score_loss
from llama2ft.inference.model_choice import ModelSpec
from llama2ft.inference.sampling import Sampling
from llama2ft.inference.settings import engine_problems


TASKS = ("generate", "loss", "benchmark")


def run_eval(cfg: DictConfig) -> dict:
    problems = []
    tasks = [cfg.task] if isinstance(cfg.task, str) else list(cfg.task) if isinstance(cfg.task, ListConfig) else []
    if not tasks or any(t not in TASKS for t in tasks) or len(set(tasks)) < len(tasks):
        problems.append(f"task={cfg.task}: must be one of {', '.join(TASKS)}, or a list of them (task=[generate,benchmark])")
    template = cfg.prompt_template
    if template not in (None, "model", *TEMPLATE_NAMES):
        problems.append(f"prompt_template={template!r}: must be one of {', '.join(TEMPLATE_NAMES)} or model")
    if not 0 < float(cfg.chinese_threshold) < 1:
        problems.append(f"chinese_threshold={cfg.chinese_threshold}: must be in (0, 1)")
    if int(cfg.batch_size) < 1:
        problems.append(f"batch_size={cfg.batch_size}: must be >= 1")
    problems += engine_problems(cfg.max_batch, cfg.engine)
    for task in ("loss", "benchmark"):
        if task in tasks and cfg.engine != "transformers":
            problems.append(f"engine={cfg.engine}: task={task} runs on engine=transformers")
    if "loss" in tasks and (cfg.data_file is None or not Path(cfg.data_file).is_file()):
        problems.append(f"data_file={cfg.data_file!r}: task=loss needs a community-format csv (file not found)")
    if cfg.questions is not None and not Path(cfg.questions).is_file():
        problems.append(f"questions={cfg.questions!r}: file not found")
    data = OmegaConf.to_container(cfg.benchmark_data, resolve=True)
    if "benchmark" in tasks:
        problems += benchmark_problems(OmegaConf.to_container(cfg.benchmarks), data, cfg.num_fewshot, cfg.limit)
    if template is None and "generate" not in tasks:
        template = "model"  # loss and benchmarks: each model's own template (benchmarks use lm-eval's prompts)
    specs, model_problems = model_specs(list(cfg.models), _base_spec(cfg, template, tasks), per_model=template is None)
    samp = Sampling.of(cfg)
    problems += model_problems + samp.problems()
    if problems:
        raise ConfigError(problems)
    out = Path(cfg.output).expanduser()
    results: dict = {}
    plan = None
    if "benchmark" in tasks:  # every benchmark file and name checked before any model loads
        plan = plan_benchmarks(list(cfg.benchmarks), data, int(cfg.num_fewshot), cfg.limit, out)
    questions = question_set(cfg.questions, cfg.encoding) if "generate" in tasks else None
    if "loss" in tasks:
        results["loss"] = score_loss(specs, str(cfg.data_file), int(cfg.max_seq_len), int(cfg.batch_size), out)
    if questions is not None:
        results["generate"] = answer_questions(specs, questions, samp, out, int(cfg.batch_size),
                                               float(cfg.chinese_threshold), int(cfg.max_batch), str(cfg.engine))
    if plan is not None:
        results["benchmark"] = run_benchmarks(specs, plan, int(cfg.batch_size), out, results.get("generate"))
    return results[tasks[0]] if len(tasks) == 1 else results


def _base_spec(cfg: DictConfig, template: Optional[str], tasks: list[str]) -> ModelSpec:
    """The model keys every `models` entry starts from: the config's, with prompt_template= as the template
    (None: each model's own, or llama2_inst for a plain folder: `runner.prompted_as`) and the community's
    system prompt for a llama2_inst evaluation."""
    system: Optional[str] = cfg.system
    if system is None and template == "llama2_inst" and "generate" in tasks:
        system = COMMUNITY_SYSTEM_PROMPT
    return replace(ModelSpec.from_config(cfg), template=None if template == "model" else template, system=system)


main = hydra_command("eval", run_eval, text_keys=TEXT_KEYS)

if __name__ == "__main__":
    sys.exit(main())
