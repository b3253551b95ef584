"""What `llama2ft-eval` runs: the models to compare, the question set, answering every question with
every model (resumable through answers.jsonl), and loss/perplexity on a community-format csv."""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any, Optional

from omegaconf import DictConfig, OmegaConf

from llama2ft.core.errors import DataError, UserError
from llama2ft.data.csv_reader import read_header
from llama2ft.data.dialogue import Turn, format_dialogue
from llama2ft.evaluation.heldout import questions_from_dialogues
from llama2ft.evaluation.loss import load_dialogues, loss_on_csv
from llama2ft.evaluation.metrics import aggregate, answer_metrics
from llama2ft.evaluation.questions import COMMUNITY_SYSTEM_PROMPT, Question, load_questions
from llama2ft.evaluation.report import ANSWERS_FILE, append_answer, read_answers, write_report
from llama2ft.inference.model_choice import ModelSpec, carried_template
from llama2ft.inference.sampling import Sampling
from llama2ft.inference.settings import load
from llama2ft.model.run_folder import is_run_folder, tokenizer_source

HELD_OUT = "held-out"  # the class of questions taken from a community-format csv
# The keys of a `models` entry: ModelSpec's own names, but `path` for model.name_or_path (see `entry_spec`)
ENTRY_KEYS = ("name", "run", "path", "adapter", "template", "system")


# ---------------------------------------------------------------- inputs
def model_specs(entries: list[Any], base: ModelSpec, per_model: bool = False) -> tuple[list[ModelSpec], list[str]]:
    """One spec per `models` entry (a path, or a dict with name/run/path/adapter/template/system),
    and every problem with them. `per_model`: an entry that names no template gets `prompted_as`'s."""
    specs, problems, names = [], [], set()
    for i, entry in enumerate(entries):
        where = f"models[{i}]"
        if isinstance(entry, str):
            entry = {"run": entry} if is_run_folder(entry) else {"path": entry}
        elif isinstance(entry, (dict, DictConfig)):
            entry = OmegaConf.to_container(entry) if isinstance(entry, DictConfig) else dict(entry)
            unknown = set(entry) - set(ENTRY_KEYS)
            if unknown:
                problems.append(f"{where}: unknown key(s) {', '.join(sorted(unknown))}; use {', '.join(ENTRY_KEYS)}")
                continue
        else:
            problems.append(f"{where}: give a folder path or {{name: ..., run: ... | path: ...}}")
            continue
        spec = entry_spec(entry, base)
        if per_model and spec.template is None:
            spec = prompted_as(spec)
        if spec.name in names:
            problems.append(f"{where}: the display name {spec.name!r} is used twice; give each model a name")
        names.add(spec.name)
        problems += spec.problems(f"{where}.")
        specs.append(spec)
    if not entries:
        problems.append("models=[...]: name at least one model (a run folder, a model folder, or {name, run|path})")
    return specs, problems


def entry_spec(entry: dict, base: ModelSpec) -> ModelSpec:
    """One `models` entry over the eval-wide spec: the entry names the model (run, or path and adapter);
    template and system default to the eval's; the display name to the folder's name."""
    spec = replace(base, run=entry.get("run"), model=replace(base.model, name_or_path=entry.get("path")),
                   adapter=entry.get("adapter"), template=entry.get("template", base.template),
                   system=entry.get("system", base.system))
    spec.name = entry.get("name") or Path(str(spec.run or spec.model.name_or_path)).name
    return spec


def prompted_as(spec: ModelSpec) -> ModelSpec:
    """The template a model is asked in when neither prompt_template= nor its entry names one: a run, or a
    folder that carries its training template (`carried_template`), its own; any other folder (a plain
    Llama-2-Chat, a hub id) `llama2_inst` with the community's system prompt asking for Chinese, as the
    community evaluated Llama-2-Chat."""
    if spec.run is not None or spec.model.name_or_path is None:
        return spec  # resolve() takes the run's template (a missing model is reported by spec.problems)
    path = str(spec.model.name_or_path)
    if carried_template(path, spec.model.tokenizer or tokenizer_source(spec.adapter, path)) is not None:
        return spec
    return replace(spec, template="llama2_inst",
                   system=spec.system if spec.system is not None else COMMUNITY_SYSTEM_PROMPT)


def question_set(path: Optional[str], encoding: Optional[str]) -> list[Question]:
    """The question set; a csv with a `text` column in the community format gives its dialogues' last
    questions with their answers as references (e.g. a training run's held-out file)."""
    if path is not None and str(path).lower().endswith(".csv") and _is_dialogue_csv(str(path), encoding):
        rows = load_dialogues(str(path), encoding=encoding)
        qas = questions_from_dialogues([turns for _, turns in rows.items], len(rows.items))
        if not qas:
            raise DataError(f"{path}: no dialogue with a question and an answer")
        return [Question(str(i + 1), _history_text(qa.history), HELD_OUT, None, qa.reference, tuple(qa.history))
                for i, qa in enumerate(qas)]
    return load_questions(path, encoding)


def _is_dialogue_csv(path: str, encoding: Optional[str]) -> bool:
    try:
        header = read_header(path, encoding)
    except DataError:
        return False  # load_questions reports what is wrong with the file
    return "text" in header and "question" not in header


def _history_text(history: list[Turn]) -> str:
    """How a held-out conversation is shown in answers.jsonl: the question, or the whole dialogue."""
    return history[0].text if len(history) == 1 else format_dialogue(history)


def _load(spec: ModelSpec, max_batch: int = 1, engine: str = "transformers") -> Any:
    try:
        return load(spec, max_batch, engine=engine)
    except UserError as exc:
        raise UserError(f"model {spec.name!r}: {exc}") from exc


# ---------------------------------------------------------------- generate
def answer_questions(specs: list[ModelSpec], questions: list[Question], samp: Sampling, out: Path,
                     batch_size: int, threshold: float, max_batch: int = 1, engine: str = "transformers") -> dict:
    """Every model's answers (appended to answers.jsonl as they come), their metrics and the report;
    `max_batch` > 1 generates that many together (continuous batching: each answer as if alone)."""
    out.mkdir(parents=True, exist_ok=True)
    answers_path = out / ANSWERS_FILE
    rows = read_answers(answers_path)
    skipped: dict[str, list[str]] = {}
    for spec in specs:
        done = {r["qid"] for r in rows if r["model"] == spec.name}
        todo = [q for q in questions if q.qid not in done]
        if not todo:
            print(f"{spec.name}: all {len(questions)} answers already in {answers_path}", flush=True)
            continue
        chat = _load(spec, max_batch, engine)
        print(f"{spec.name}: answering {len(todo)} questions ({len(done)} already done), prompted in template "
              f"{chat.template.name}", flush=True)
        todo, too_long = _fitting(chat, todo, samp.max_new_tokens)
        skipped[spec.name] = [q.qid for q in too_long]
        if too_long:
            print(f"  skipped {len(too_long)} question(s) that do not fit the context of {chat.context_length} "
                  f"tokens: qid {', '.join(q.qid for q in too_long[:10])}{' ...' if len(too_long) > 10 else ''}",
                  flush=True)
        for start in range(0, len(todo), batch_size):
            batch = todo[start:start + batch_size]
            replies = chat.chat_batch([q.conversation() for q in batch], samp, batch_size=batch_size)
            for q, r in zip(batch, replies):
                row = {"qid": q.qid, "class": q.category, "model": spec.name, "prompt": q.question,
                       "answer": r.text, "reference": q.reference, "finish_reason": r.finish_reason,
                       "metrics": answer_metrics(r.text, r.finish_reason == "stop", q.reference, threshold)}
                append_answer(answers_path, row)
                rows.append(row)
            print(f"  {min(start + batch_size, len(todo))}/{len(todo)}", flush=True)
        chat.close()  # frees the model before the next one loads
        del chat
    wanted = {q.qid for q in questions}
    names = [s.name for s in specs]
    rows = [r for r in rows if r["model"] in names and r["qid"] in wanted]
    metrics = aggregate(rows)
    metrics["threshold"] = threshold
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
def score_loss(specs: list[ModelSpec], data_file: str, max_seq_len: int, batch_size: int, out: Path) -> dict:
    """Loss and perplexity of every model on a community-format csv, into OUT/loss.json."""
    rows = load_dialogues(data_file)  # checked before any model is loaded
    results = {}
    for spec in specs:
        chat = _load(spec)
        res = loss_on_csv(chat.model, chat.tokenizer, chat.template, rows, max_seq_len, batch_size)
        results[spec.name] = res
        print(f"{spec.name}: loss {res['loss']:.4f}, perplexity {res['perplexity']:.2f} on {res['tokens']} answer "
              f"tokens ({res['rows']} rows, template {chat.template.name})", flush=True)
        chat.close()  # frees the model before the next one loads
        del chat
    out.mkdir(parents=True, exist_ok=True)
    (out / "loss.json").write_text(json.dumps({"data_file": data_file, "models": results}, indent=2,
                                              ensure_ascii=False), encoding="utf-8")
    return results
