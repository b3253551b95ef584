"""llama2ft-eval: ask one or more models a question set and compare how (and whether) they answer in
Chinese; or `task=loss` for loss and perplexity on a community-format csv, masked as in training.

    llama2ft-eval models=[outputs/train/RUN] output=outputs/eval/run1
    llama2ft-eval 'models=[{name:base,path:/models/Llama-2-7b-chat-hf},{name:tuned,run:outputs/train/RUN}]'
    llama2ft-eval task=loss models=[outputs/train/RUN] data_file=data/sample/dev.csv

Answers go to OUTPUT/answers.jsonl as they are made; running again with the same output= resumes.
"""
from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any, Optional

import hydra
from omegaconf import DictConfig, OmegaConf

from llama2ft import CONFIG_DIR
from llama2ft.csvfile import read_header
from llama2ft.dialogue import Turn
from llama2ft.errors import ConfigError, DataError, UserError, exit_on_user_error
from llama2ft.eval_metrics import aggregate, answer_metrics
from llama2ft.eval_questions import COMMUNITY_SYSTEM_PROMPT, Question, load_questions
from llama2ft.eval_report import ANSWERS_FILE, append_answer, read_answers, write_report
from llama2ft.inference import ModelSpec
from llama2ft.runs import is_run_folder
from llama2ft.talk import load, quote_text_overrides, sampling

HELD_OUT = "held-out"  # the class of questions taken from a community-format csv


# ---------------------------------------------------------------- inputs
def model_specs(cfg: DictConfig, base: ModelSpec) -> tuple[list[ModelSpec], list[str]]:
    """One spec per `models` entry (a path, or a dict with name/run/path/adapter/template/system)."""
    specs, problems, names = [], [], set()
    for i, entry in enumerate(cfg.models):
        where = f"models[{i}]"
        if isinstance(entry, str):
            entry = {"run": entry} if is_run_folder(entry) else {"path": entry}
        elif isinstance(entry, DictConfig):
            entry = OmegaConf.to_container(entry)
            unknown = set(entry) - {"name", "run", "path", "adapter", "template", "system"}
            if unknown:
                problems.append(f"{where}: unknown key(s) {', '.join(sorted(unknown))}; use name, run, path, adapter, "
                                "template, system")
                continue
        else:
            problems.append(f"{where}: give a folder path or {{name: ..., run: ... | path: ...}}")
            continue
        spec = replace(base, run=entry.get("run"), name_or_path=entry.get("path"), adapter=entry.get("adapter"),
                       template=entry.get("template", base.template), system=entry.get("system", base.system))
        name = entry.get("name") or Path(str(spec.run or spec.name_or_path)).name
        if name in names:
            problems.append(f"{where}: the display name {name!r} is used twice; give each model a name")
        names.add(name)
        spec.name = name
        problems += spec.problems(f"{where}.")
        specs.append(spec)
    if not cfg.models:
        problems.append("models=[...]: name at least one model (a run folder, a model folder, or {name, run|path})")
    return specs, problems


def questions_of(cfg: DictConfig) -> list[Question]:
    """The question set; a csv with a `text` column in the community format gives its dialogues' last
    questions with their answers as references (e.g. a training run's held-out file)."""
    path = cfg.questions
    if path is not None and str(path).lower().endswith(".csv") and _is_dialogue_csv(str(path), cfg.encoding):
        from llama2ft.eval_loss import load_dialogues
        from llama2ft.sample_eval import questions_from_dialogues

        rows = load_dialogues(str(path), encoding=cfg.encoding)
        qas = questions_from_dialogues([turns for _, turns in rows.items], len(rows.items))
        if not qas:
            raise DataError(f"{path}: no dialogue with a question and an answer")
        return [Question(str(i + 1), _history_text(qa.history), HELD_OUT, None, qa.reference, tuple(qa.history))
                for i, qa in enumerate(qas)]
    return load_questions(path, cfg.encoding)


def _is_dialogue_csv(path: str, encoding: Optional[str]) -> bool:
    try:
        header = read_header(path, encoding)
    except DataError:
        return False  # load_questions reports what is wrong with the file
    return "text" in header and "question" not in header


def _history_text(history: list[Turn]) -> str:
    """How a held-out conversation is shown in answers.jsonl: the question, or the whole dialogue."""
    from llama2ft.dialogue import format_dialogue

    return history[0].text if len(history) == 1 else format_dialogue(history)


# ---------------------------------------------------------------- generate
def run_generate(cfg: DictConfig, specs: list[ModelSpec], out: Path) -> dict:
    questions = questions_of(cfg)
    out.mkdir(parents=True, exist_ok=True)
    answers_path = out / ANSWERS_FILE
    rows = read_answers(answers_path)
    samp = sampling(cfg)
    skipped: dict[str, list[str]] = {}
    for spec in specs:
        done = {r["qid"] for r in rows if r["model"] == spec.name}
        todo = [q for q in questions if q.qid not in done]
        if not todo:
            print(f"{spec.name}: all {len(questions)} answers already in {answers_path}", flush=True)
            continue
        print(f"{spec.name}: answering {len(todo)} questions ({len(done)} already done)", flush=True)
        try:
            chat = load(spec)
        except UserError as exc:
            raise UserError(f"model {spec.name!r}: {exc}") from exc
        todo, too_long = _fitting(chat, todo, samp.max_new_tokens)
        skipped[spec.name] = [q.qid for q in too_long]
        if too_long:
            print(f"  skipped {len(too_long)} question(s) that do not fit the context of {chat.context_length} "
                  f"tokens: qid {', '.join(q.qid for q in too_long[:10])}{' ...' if len(too_long) > 10 else ''}",
                  flush=True)
        size = int(cfg.batch_size)
        for start in range(0, len(todo), size):
            batch = todo[start:start + size]
            replies = chat.chat_batch([q.conversation() for q in batch], samp, batch_size=size)
            for q, r in zip(batch, replies):
                row = {"qid": q.qid, "class": q.category, "model": spec.name, "prompt": q.question,
                       "answer": r.text, "reference": q.reference, "finish_reason": r.finish_reason,
                       "metrics": answer_metrics(r.text, r.finish_reason == "stop", q.reference,
                                                 float(cfg.chinese_threshold))}
                append_answer(answers_path, row)
                rows.append(row)
            print(f"  {min(start + size, len(todo))}/{len(todo)}", flush=True)
        chat.close()  # frees the model before the next one loads
        del chat
    wanted = {q.qid for q in questions}
    names = [s.name for s in specs]
    rows = [r for r in rows if r["model"] in names and r["qid"] in wanted]
    metrics = aggregate(rows)
    metrics["threshold"] = float(cfg.chinese_threshold)
    metrics["skipped_too_long"] = {name: qids for name, qids in skipped.items() if qids}
    write_report(out, metrics, names)
    for name in names:
        o = metrics["models"][name]["overall"]
        print(f"{name}: Chinese answers {o['chinese_answer_rate']:.0%}, mean Chinese share {o['mean_chinese_share']:.0%},"
              f" stopped at EOS {o['eos_rate']:.0%}, degenerate {o['degenerate_rate']:.0%} (n={o['n']})", flush=True)
    print(f"report: {out / 'report.md'}", flush=True)
    return metrics


def _fitting(chat: Any, questions: list[Question], max_new_tokens: int) -> tuple[list[Question], list[Question]]:
    """The questions whose prompt fits the model's context, and those that do not (left out, not failed:
    one long question should not stop an evaluation of hundreds)."""
    fit, too_long = [], []
    for q in questions:
        try:
            chat.prompt_ids(q.conversation(), max_new_tokens)
            fit.append(q)
        except UserError:
            too_long.append(q)
    return fit, too_long


# ---------------------------------------------------------------- loss
def run_loss(cfg: DictConfig, specs: list[ModelSpec], out: Path) -> dict:
    from llama2ft.eval_loss import load_dialogues, loss_on_csv

    rows = load_dialogues(str(cfg.data_file))  # checked before any model is loaded
    results = {}
    for spec in specs:
        try:
            chat = load(spec)
        except UserError as exc:
            raise UserError(f"model {spec.name!r}: {exc}") from exc
        res = loss_on_csv(chat.model, chat.tokenizer, chat.template, rows, int(cfg.max_seq_len), int(cfg.batch_size))
        results[spec.name] = res
        print(f"{spec.name}: loss {res['loss']:.4f}, perplexity {res['perplexity']:.2f} on {res['tokens']} answer "
              f"tokens ({res['rows']} rows, template {chat.template.name})", flush=True)
        chat.close()  # frees the model before the next one loads
        del chat
    out.mkdir(parents=True, exist_ok=True)
    (out / "loss.json").write_text(json.dumps({"data_file": str(cfg.data_file), "models": results}, indent=2,
                                              ensure_ascii=False), encoding="utf-8")
    return results


# ---------------------------------------------------------------- app
def run_eval(cfg: DictConfig) -> dict:
    problems = []
    if cfg.task not in ("generate", "loss"):
        problems.append(f"task={cfg.task!r}: must be generate or loss")
    template = cfg.prompt_template
    if template not in (None, "model", "llama2_inst", "human_assistant"):
        problems.append(f"prompt_template={template!r}: must be llama2_inst, human_assistant or model")
    if template is None:
        template = "llama2_inst" if cfg.task == "generate" else "model"
    if not 0 < float(cfg.chinese_threshold) < 1:
        problems.append(f"chinese_threshold={cfg.chinese_threshold}: must be in (0, 1)")
    if int(cfg.batch_size) < 1:
        problems.append(f"batch_size={cfg.batch_size}: must be >= 1")
    if cfg.task == "loss" and (cfg.data_file is None or not Path(cfg.data_file).is_file()):
        problems.append(f"data_file={cfg.data_file!r}: task=loss needs a community-format csv (file not found)")
    if cfg.questions is not None and not Path(cfg.questions).is_file():
        problems.append(f"questions={cfg.questions!r}: file not found")
    base = _base_spec(cfg, template)
    specs, model_problems = model_specs(cfg, base)
    problems += model_problems + sampling(cfg).problems()
    if problems:
        raise ConfigError(problems)
    out = Path(cfg.output).expanduser()
    return run_loss(cfg, specs, out) if cfg.task == "loss" else run_generate(cfg, specs, out)


def _base_spec(cfg: DictConfig, template: str) -> ModelSpec:
    system: Optional[str] = cfg.system
    if system is None and template == "llama2_inst" and cfg.task == "generate":
        system = COMMUNITY_SYSTEM_PROMPT
    return ModelSpec(template=None if template == "model" else template, system=system, device=cfg.device,
                     dtype=cfg.model.dtype, tokenizer=cfg.model.tokenizer)


@hydra.main(config_path=str(CONFIG_DIR), config_name="eval", version_base="1.3")
@exit_on_user_error
def _hydra_main(cfg: DictConfig) -> Any:
    run_eval(cfg)


def main() -> None:
    sys.argv[1:] = quote_text_overrides(sys.argv[1:])
    _hydra_main()


if __name__ == "__main__":
    sys.exit(main())
