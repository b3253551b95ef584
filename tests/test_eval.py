"""llama2ft-eval end to end on the tiny default: the fine-tuned run answers its held-out questions in
Chinese more often than the untrained base; reports, charts, resuming, task=loss and bad input."""
from __future__ import annotations

import json
import shutil

import pytest

from conftest import AppResult, run_app
from llama2ft import PROJECT_ROOT


DEV = PROJECT_ROOT / "data" / "sample" / "dev.csv"


def evaluate(*args: str) -> AppResult:
    return run_app("eval", *args)


def both_models(run) -> str:
    return f"models=[{{name:base,path:{run / 'base_model'}}},{{name:tuned,run:{run}}}]"


def assert_one_error(res: AppResult, *needles: str) -> None:
    assert res.returncode == 2, (res.stdout[-2000:], res.stderr[-2000:])
    assert "Traceback" not in res.stderr
    assert len([line for line in res.stderr.splitlines() if line.startswith("error:")]) == 1, res.stderr
    text = res.stderr[res.stderr.index("error:"):]
    for needle in needles:
        assert needle in text, text


@pytest.mark.slow
def test_fine_tuned_beats_base_on_held_out_questions(learned_run, tmp_path):
    out = tmp_path / "eval"
    args = [both_models(learned_run.path), f"questions={DEV}", "prompt_template=model", "max_new_tokens=24",
            f"output={out}"]
    res = evaluate(*args)
    assert res.returncode == 0, res.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    base, tuned = metrics["models"]["base"]["overall"], metrics["models"]["tuned"]["overall"]
    assert tuned["n"] == base["n"] == 60
    assert tuned["chinese_answer_rate"] > base["chinese_answer_rate"] + 0.1, (base, tuned)  # 75% vs 52% measured
    assert tuned["eos_rate"] > base["eos_rate"]
    assert tuned["exact_match"] > 0.5 > base["exact_match"]
    rows = [json.loads(line) for line in (out / "answers.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(rows) == 120
    assert {"qid", "class", "model", "prompt", "answer", "metrics"} <= set(rows[0])
    report = (out / "report.md").read_text(encoding="utf-8")
    assert "base" in report and "tuned" in report and " pp)" in report  # side by side, with deltas
    for png in ("chinese_rate_by_class.png", "overview.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"

    again = evaluate(*args)  # resumed: nothing is generated twice
    assert again.returncode == 0, again.stderr[-3000:]
    assert "all 60 answers already in" in again.stdout
    assert len((out / "answers.jsonl").read_text(encoding="utf-8").splitlines()) == 120


def dev_questions(tmp_path, n: int = 10):
    """The first `n` held-out dialogues of the embedded task, as a question file with references."""
    import csv

    rows = list(csv.DictReader(DEV.open(encoding="utf-8")))[:n]
    path = tmp_path / "dev.csv"
    with path.open("w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, ["text"])
        writer.writeheader()
        writer.writerows(rows)
    return path


def overall(out, name: str) -> dict:
    return json.loads((out / "metrics.json").read_text(encoding="utf-8"))["models"][name]["overall"]


@pytest.mark.slow
def test_a_run_is_asked_in_its_own_template_and_a_plain_folder_in_llama2_inst(learned_run, tmp_path):
    """With no prompt_template=, `models=[RUN]` answers (it used to be asked in llama2_inst and answer nothing),
    a plain folder is asked as the community asked Llama-2-Chat, and an entry's template= still wins."""
    questions, run = dev_questions(tmp_path), learned_run.path
    out = tmp_path / "eval"
    res = evaluate(f"models=[{run},{{name:plain,path:{run / 'base_model'}}},{{name:forced,run:{run},"
                   "template:llama2_inst}]", f"questions={questions}", "max_new_tokens=12", f"output={out}")
    assert res.returncode == 0, res.stderr[-3000:]
    for name, template in ((run.name, "human_assistant"), ("plain", "llama2_inst"), ("forced", "llama2_inst")):
        assert f"{name}: answering 10 questions (0 already done), prompted in template {template}" in res.stdout
    tuned = overall(out, run.name)
    assert tuned["empty_rate"] == 0 and tuned["exact_match"] >= 0.6, tuned  # 0.8 measured
    assert overall(out, "forced")["exact_match"] == 0  # a template it never saw: what the old default gave
    rows = [json.loads(line) for line in (out / "answers.jsonl").read_text(encoding="utf-8").splitlines()]
    assert "[INST]" not in rows[0]["prompt"]  # the question as asked; the template is applied inside


def test_which_template_each_model_is_asked_in(learned_run, tmp_path):
    """No model loads: a run keeps its own template, so does a folder llama2ft-merge wrote (llama2ft.json, or
    only the chat_template it put into the tokenizer), a plain folder or hub id gets llama2_inst with the
    community's system prompt; an entry's template= and prompt_template= win."""
    from llama2ft.evaluation.questions import COMMUNITY_SYSTEM_PROMPT
    from llama2ft.evaluation.runner import model_specs
    from llama2ft.inference.model_choice import ModelSpec, resolve
    from llama2ft.model.run_folder import write_chat_meta

    run = learned_run.path
    plain = tmp_path / "plain"
    shutil.copytree(run / "base_model", plain)
    merged = tmp_path / "merged"
    shutil.copytree(run / "base_model", merged)
    write_chat_meta(merged, "llama2_inst", "请用中文回答。")
    jinja_only = tmp_path / "jinja-only"  # a merged folder that lost its llama2ft.json
    shutil.copytree(run / "base_model", jinja_only)
    shutil.copy(run / "tokenizer" / "chat_template.jinja", jinja_only)
    entries = [str(run), str(merged), str(jinja_only), str(plain), "meta-llama/Llama-2-7b-chat-hf",
               {"name": "mine", "path": str(plain), "template": "human_assistant"}]

    def asked(per_model: bool, template=None) -> list[tuple]:
        specs, problems = model_specs(entries, ModelSpec(template=template), per_model=per_model)
        assert not problems
        return [(s.template, s.system) for s in specs]

    community = ("llama2_inst", COMMUNITY_SYSTEM_PROMPT)
    assert asked(True) == [(None, None)] * 3 + [community, community, ("human_assistant", None)]
    specs, _ = model_specs(entries[:3], ModelSpec(), per_model=True)
    assert [(r.template, r.system) for r in map(resolve, specs)] == [
        ("human_assistant", None), ("llama2_inst", "请用中文回答。"), ("human_assistant", None)]
    assert asked(False, "llama2_inst")[:5] == [("llama2_inst", None)] * 5  # prompt_template= for every model
    specs, _ = model_specs(entries[3:4], ModelSpec(), per_model=False)  # prompt_template=model: as chat does
    assert resolve(specs[0]).template == "human_assistant"


@pytest.mark.slow
def test_a_question_longer_than_the_context_is_left_out_not_fatal(learned_run, tmp_path):
    questions = tmp_path / "q.csv"
    questions.write_text("question,category,reference\n数字 680 的中文读法是什么？,数字,六百八十\n"
                         f"{'很长的问题' * 100},长,\n", encoding="utf-8")
    out = tmp_path / "long"
    res = evaluate(f"models=[{learned_run.path}]", f"questions={questions}", "prompt_template=model",
                   "max_new_tokens=16", f"output={out}")
    assert res.returncode == 0, res.stderr[-3000:]
    assert "skipped 1 question(s) that do not fit the context of 256 tokens: qid 2" in res.stdout
    metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["skipped_too_long"] == {"run": ["2"]}
    assert metrics["models"]["run"]["overall"]["exact_match"] == 1.0
    assert "Left out for `run`: 1 question(s)" in (out / "report.md").read_text(encoding="utf-8")


@pytest.mark.slow
def test_loss_task_prefers_the_fine_tuned_run(learned_run, tmp_path):
    out = tmp_path / "loss"
    res = evaluate("task=loss", both_models(learned_run.path), f"data_file={DEV}", f"output={out}")
    assert res.returncode == 0, res.stderr[-3000:]
    result = json.loads((out / "loss.json").read_text(encoding="utf-8"))["models"]
    assert result["tuned"]["loss"] < 0.5 < result["base"]["loss"]
    assert result["tuned"]["perplexity"] < result["base"]["perplexity"]


@pytest.mark.slow
def test_bad_input_gets_one_clear_message(learned_run, tmp_path):
    run = learned_run.path
    assert_one_error(evaluate("models=[]"), "models=[...]")
    weird = tmp_path / "questions.txt"
    weird.write_text("hello", encoding="utf-8")
    assert_one_error(evaluate(f"models=[{run}]", f"questions={weird}", f"output={tmp_path / 'o1'}"), "questions.txt")
    empty = tmp_path / "empty.json"
    empty.write_text("[]", encoding="utf-8")
    assert_one_error(evaluate(f"models=[{run}]", f"questions={empty}", f"output={tmp_path / 'o2'}"), "empty.json")
    broken = tmp_path / "broken.json"
    broken.write_text('[{"qid": 1, "question": "你好"}]', encoding="utf-8")
    assert_one_error(evaluate(f"models=[{run}]", f"questions={broken}", f"output={tmp_path / 'o3'}"),
                     "broken.json", "first_level_class")
    assert_one_error(evaluate("models=[/no/such/model]", f"output={tmp_path / 'o4'}"), "/no/such/model")
    bad_model = tmp_path / "bad-model"
    bad_model.mkdir()
    (bad_model / "config.json").write_text("{not json", encoding="utf-8")
    assert_one_error(evaluate(f"models=[{bad_model}]", f"output={tmp_path / 'o5'}"), "bad-model")
    assert_one_error(evaluate(f"models=[{run}]", "task=loss", f"output={tmp_path / 'o6'}"), "data_file")
    assert_one_error(evaluate(f"models=[{run},{run}]", f"output={tmp_path / 'o7'}"), "used twice")


def _markdown_answers(path) -> list[str]:
    """The answer column of the community's markdown tables of Llama-2-Chat's answers."""
    answers = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("| ") and not line.startswith(("| ---", "| 一级分类")):
            answers.append(line.strip().strip("|").split(" | ")[-1].replace("\\n", "\n").replace("</s>", ""))
    return answers


@pytest.mark.parametrize("size", ["7B", "13B"])
def test_chinese_answer_rate_on_real_answers(size):
    """The metric tells what the community saw: Llama-2-Chat answers the 95 questions in English (4-6%
    Chinese answers measured), Chinese models answer the AtomBulb bank in Chinese (93-97%)."""
    import json

    from conftest import shared_file
    from llama2ft.evaluation.metrics import is_chinese_answer

    llama = _markdown_answers(shared_file(f"atombulb/llama2chinese_meta_eval_{size}.md"))
    assert len(llama) == 95
    assert sum(map(is_chinese_answer, llama)) / len(llama) < 0.1
    chinese = json.loads(shared_file("atombulb/answers/Carrot-2022.06.12.json").read_text(encoding="utf-8"))
    assert sum(is_chinese_answer(a["answer"]) for a in chinese) / len(chinese) > 0.9
