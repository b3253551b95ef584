"""`llama2ft-eval task=benchmark`: lm-evaluation-harness, used as a library, on every `models` entry.

`plan_benchmarks` does everything that can fail on the user's input before a model is loaded: the local
C-Eval/CMMLU files are read and checked (benchmark_data.py) and written as lm-eval task files into the
output folder, the benchmark names are resolved (`ceval` is lm-eval's `ceval-valid` group; any lm-eval task
or group name is accepted), and lm-eval builds the tasks once, which loads their data. `run_benchmarks` then
loads each model the way chat and eval load it (run folder with its adapter, merged folder, base + adapter,
hub id; its own dtype and device), hands it to lm-eval's `hf` model (HFLM) and lets lm-eval score it; lm-eval's
raw results are kept in OUTPUT/lm_eval/MODEL/, llama2ft's summary goes to metrics.json and report.md.
Scoring (prompts, few-shot examples, log-likelihood of each choice, accuracy) is lm-eval's own.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from llama2ft.core.errors import ConfigError, UserError, first_line
from llama2ft.evaluation.benchmark_data import ALIASES, LAYOUTS, Subject, read_local, write_tasks
from llama2ft.evaluation.benchmark_report import summarize, write_benchmark_report
from llama2ft.inference.model_choice import ModelSpec
from llama2ft.inference.settings import load

INSTALL_HINT = "pip install 'llama2ft[bench]'"
TASKS_DIR = "lm_eval_tasks"  # in the output folder: the task files lm-eval read for the local data
RAW_DIR = "lm_eval"  # in the output folder: lm-eval's own results per model


@dataclass
class BenchmarkPlan:
    """What will be run: lm-eval names, the local subjects, and the settings recorded with the results."""

    names: list[str]
    local: dict[str, list[Subject]]
    num_fewshot: int
    limit: Optional[int]
    task_manager: Any = None
    request: dict = field(default_factory=dict)  # a model's results are reused only for the same request


def benchmark_problems(benchmarks: Any, data: dict[str, Optional[str]], num_fewshot: int, limit: Optional[int]
                       ) -> list[str]:
    """The benchmark keys' values; lm-eval must be installed."""
    p = []
    if importlib.util.find_spec("lm_eval") is None:
        p.append(f"task=benchmark needs lm-evaluation-harness, which is not installed ({INSTALL_HINT})")
    if not isinstance(benchmarks, (list, tuple)) or not benchmarks or not all(isinstance(b, str) for b in benchmarks):
        p.append(f"benchmarks={benchmarks!r}: give a list of lm-eval task or group names, e.g. [ceval,cmmlu]")
    if int(num_fewshot) < 0:
        p.append(f"num_fewshot={num_fewshot}: must be >= 0")
    if limit is not None and int(limit) < 1:
        p.append(f"limit={limit}: must be >= 1 (questions per subject) or null for all")
    for key in data:
        if key not in LAYOUTS:
            p.append(f"benchmark_data.{key}: unknown benchmark; local data is read for {', '.join(LAYOUTS)}")
    return p


def plan_benchmarks(benchmarks: list[str], data: dict[str, Optional[str]], num_fewshot: int, limit: Optional[int],
                    out: Path) -> BenchmarkPlan:
    """Check the data and names and let lm-eval build the tasks (UserError naming what is wrong)."""
    local = {key: read_local(LAYOUTS[key], folder, num_fewshot) for key, folder in data.items() if folder}
    names, problems, builtin = [], [], False
    for wanted in benchmarks:
        name = ALIASES.get(wanted, wanted)
        layout = next((LAYOUTS[k] for k in local if name == LAYOUTS[k].group or name.startswith(LAYOUTS[k].prefix)),
                      None)
        if layout is not None and name != layout.group and name not in {s.task for s in local[layout.key]}:
            subject = name[len(layout.prefix):]
            problems.append(f"benchmarks: {wanted}: benchmark_data.{layout.key}={data[layout.key]} has no "
                            f"{layout.scored}/{layout.scored_file.format(subject)}")
        builtin |= layout is None
        if name in names:
            problems.append(f"benchmarks: {wanted} is named twice")
        names.append(name)
    if problems:
        raise ConfigError(problems)
    task_dir = out / TASKS_DIR
    written = write_tasks([s for subjects in local.values() for s in subjects], task_dir) if local else []
    manager = _task_manager(task_dir if local else None, builtin)
    unknown = [n for n in names if n not in manager.all_tasks]
    if unknown:
        raise ConfigError([f"benchmarks: {n}: not an lm-eval task or group (`lm-eval ls tasks` lists them)"
                           for n in unknown])
    try:
        manager.load(names)  # builds every task now: a dataset that cannot be loaded fails before any model loads
    except Exception as exc:  # noqa: BLE001 - lm-eval and datasets raise many kinds; one clear message instead
        hint = "; without hub access give the official files: " + ", ".join(
            f"benchmark_data.{k}=DIR" for k in LAYOUTS if k not in local)
        raise UserError(f"benchmarks {', '.join(benchmarks)}: lm-eval could not load the data "
                        f"({first_line(exc)}){hint if builtin else ''}") from None
    digest = hashlib.sha256(b"".join(p.read_bytes() for p in sorted(task_dir.rglob("*")) if p.is_file())
                            if written else b"").hexdigest()[:16]
    request = {"benchmarks": names, "num_fewshot": num_fewshot, "limit": limit,
               "data": {k: str(Path(v).expanduser().resolve()) for k, v in data.items() if v}, "data_digest": digest}
    return BenchmarkPlan(names, local, num_fewshot, limit, manager, request)


def _task_manager(task_dir: Optional[Path], builtin: bool) -> Any:
    """lm-eval's task index: the local task files (they override lm-eval's tasks of the same name) and, when a
    name is not local, lm-eval's own tasks too (indexing all of them takes ~10 s)."""
    _quiet_lm_eval()
    from lm_eval.tasks import TaskManager

    return TaskManager(include_defaults=builtin, include_path=str(task_dir) if task_dir else None)


def _quiet_lm_eval() -> None:
    # lm-eval logs a warning for every task file overriding its own and for a model passed as an object
    logging.getLogger("lm_eval").setLevel(logging.ERROR)


def run_benchmarks(specs: list[ModelSpec], plan: BenchmarkPlan, batch_size: int, out: Path,
                   chinese: Optional[dict] = None) -> dict:
    """Every model through lm-eval; lm-eval's raw results per model, metrics.json, report.md and the chart.
    `chinese` (a Chinese-answer evaluation's metrics of the same models) joins them in one report."""
    summaries, info = {}, {}
    for spec in specs:
        raw_dir = out / RAW_DIR / _folder_name(spec.name)
        results = _saved(raw_dir, plan.request)
        if results is not None:
            print(f"{spec.name}: benchmark results already in {raw_dir}", flush=True)
        else:
            results = _evaluate(spec, plan, batch_size)
            _save_raw(raw_dir, results, plan.request)
        summaries[spec.name] = summarize(results, plan.names)
        info[spec.name] = results["llama2ft_model"]
        for name, s in summaries[spec.name].items():
            print(f"{spec.name}: {name} {s['metric']} {s['score']:.1%} (n={s['n']})", flush=True)
    metrics = {"settings": {**plan.request, "batch_size": batch_size}, "models": summaries, "model_info": info}
    write_benchmark_report(out, metrics, [s.name for s in specs], chinese)
    print(f"report: {out / 'report.md'}", flush=True)
    return metrics


def _evaluate(spec: ModelSpec, plan: BenchmarkPlan, batch_size: int) -> dict:
    try:
        chat = load(spec)
    except UserError as exc:
        raise UserError(f"model {spec.name!r}: {exc}") from exc
    _quiet_lm_eval()
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM

    print(f"{spec.name}: scoring {', '.join(plan.names)} with lm-eval ({plan.num_fewshot}-shot"
          f"{f', {plan.limit} questions per subject' if plan.limit else ''})", flush=True)
    # BOS first, as in training (lm-eval's default would leave it to the tokenizer); the context is the model's
    lm = HFLM(pretrained=chat.model, tokenizer=chat.tokenizer, batch_size=batch_size, add_bos_token=True,
              max_length=chat.context_length)
    results = simple_evaluate(model=lm, tasks=plan.names, num_fewshot=plan.num_fewshot, limit=plan.limit,
                              task_manager=plan.task_manager, log_samples=True)
    over = _over_context(results.get("samples", {}), chat.tokenizer, chat.context_length)
    if over:
        print(f"  {over} question(s) with prompts longer than the model's context of {chat.context_length} tokens: "
              "lm-eval kept their last tokens (a lower num_fewshot makes them fit)", flush=True)
    weights = next(chat.model.parameters())
    results["llama2ft_model"] = {"dtype": str(weights.dtype).removeprefix("torch."), "device": str(weights.device),
                                 "context_length": chat.context_length, "prompts_over_context": over}
    chat.close()
    return results


def _over_context(samples: dict[str, list[dict]], tokenizer: Any, context_length: int) -> int:
    """Questions whose prompt (BOS, context and a choice) does not fit the model: lm-eval cuts their start."""
    texts = [str(a[0]) + str(a[1]) for rows in samples.values() for row in rows for a in row["arguments"][:1]]
    if not texts:
        return 0
    lengths = [len(ids) + 1 for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]
    return sum(n > context_length + 1 for n in lengths)


def _folder_name(name: str) -> str:
    return re.sub(r"[^\w.\-]+", "_", name).strip("._") or "model"


def _saved(raw_dir: Path, request: dict) -> Optional[dict]:
    """A model's earlier lm-eval results in this output folder, when they answer the same request."""
    path = raw_dir / "results.json"
    if not path.is_file():
        return None
    try:
        results = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        return None
    return results if results.get("llama2ft_request") == request else None


def _save_raw(raw_dir: Path, results: dict, request: dict) -> None:
    """lm-eval's results as its CLI writes them: results.json (without the samples) and one
    samples_TASK.jsonl per task (every question with its arguments, log-likelihoods and score)."""
    raw_dir.mkdir(parents=True, exist_ok=True)
    samples = results.pop("samples", {})
    for task, rows in samples.items():
        (raw_dir / f"samples_{task}.jsonl").write_text(
            "".join(json.dumps(r, ensure_ascii=False, default=str) + "\n" for r in rows), encoding="utf-8")
    results["llama2ft_request"] = request
    (raw_dir / "results.json").write_text(json.dumps(results, indent=2, ensure_ascii=False, default=str) + "\n",
                                          encoding="utf-8")
