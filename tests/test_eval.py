"""llama2ft-eval end to end on the tiny default: the fine-tuned run answers its held-out questions in
Chinese more often than the untrained base; reports, charts, resuming, task=loss and bad input."""
from __future__ import annotations

import json

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


@pytest.mark.slow
def test_built_in_questions_with_the_community_prompt(learned_run, tmp_path):
    out = tmp_path / "builtin"
    res = evaluate(f"models=[{learned_run.path}]", "max_new_tokens=8", f"output={out}")
    assert res.returncode == 0, res.stderr[-3000:]
    rows = [json.loads(line) for line in (out / "answers.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(rows) == 30 and len({r["class"] for r in rows}) == 8
    assert rows[0]["model"] == "run"
    assert "[INST] <<SYS>>" not in rows[0]["prompt"]  # the question as asked; the template is applied inside


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
