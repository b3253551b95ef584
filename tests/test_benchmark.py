"""`llama2ft-eval task=benchmark` end to end on the embedded model and the project's benchmark sample: the base
and the fine-tuned run scored by lm-eval in one command with the Chinese-answer evaluation (one report, deltas
against the first model), per subject and category with counts, lm-eval's raw results kept, a rerun resumed;
a single lm-eval subject task; the hub datasets' failure offline is one clear message."""
from __future__ import annotations

import json

import pytest

from conftest import run_app

pytestmark = pytest.mark.slow


def test_benchmarks_and_chinese_answers_in_one_report(learned_run, tmp_path):
    run = learned_run.path
    questions = tmp_path / "q.csv"
    questions.write_text("question,category,reference\n数字 680 的中文读法是什么？,数字,六百八十\n"
                         "把“四百零七”写成阿拉伯数字。,数字,407\n请把 65 逐位写成中文。,数字,六五\n", encoding="utf-8")
    out = tmp_path / "eval"
    args = ["task=[generate,benchmark]", f"models=[{{name:base,path:{run / 'base_model'}}},{{name:tuned,run:{run}}}]",
            "benchmark_data=sample", "num_fewshot=2", "limit=4", f"questions={questions}", "prompt_template=model",
            "max_new_tokens=12", f"output={out}"]
    res = run_app("eval", *args)
    assert res.returncode == 0, res.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["models"]["tuned"]["overall"]["exact_match"] > metrics["models"]["base"]["overall"]["exact_match"]
    bench = metrics["benchmarks"]
    assert bench["settings"]["num_fewshot"] == 2 and bench["settings"]["limit"] == 4
    for name in ("base", "tuned"):
        ceval, cmmlu = bench["models"][name]["ceval-valid"], bench["models"][name]["cmmlu"]
        assert ceval["n"] == cmmlu["n"] == 8 and 0 <= ceval["score"] <= 1
        assert {s: v["n"] for s, v in ceval["subjects"].items()} == {"high_school_chinese": 4,
                                                                      "middle_school_mathematics": 4}
        assert {c: v["n"] for c, v in ceval["categories"].items()} == {"STEM": 4, "Humanities": 4}
        assert {c: v["n"] for c, v in cmmlu["categories"].items()} == {"STEM": 4, "Social Science": 4,
                                                                       "China specific": 4}
        assert bench["model_info"][name]["dtype"] == "float32"
    report = (out / "report.md").read_text(encoding="utf-8")
    assert report.startswith("# Evaluation summary")
    summary = report.split("# Chinese answers")[0]
    assert "exact match" in summary and "C-Eval (ceval-valid) acc (n=8)" in summary and " pp)" in summary
    assert "## CMMLU (cmmlu) by category" in report and "China specific" in report
    assert (out / "benchmarks.png").read_bytes()[:4] == b"\x89PNG"
    raw = json.loads((out / "lm_eval" / "tuned" / "results.json").read_text(encoding="utf-8"))
    assert raw["results"]["cmmlu"]["acc,none"] == bench["models"]["tuned"]["cmmlu"]["score"]
    samples = (out / "lm_eval" / "tuned" / "samples_cmmlu_elementary_chinese.jsonl").read_text(encoding="utf-8")
    assert len(samples.splitlines()) == 4 and "答案：" in samples  # lm-eval's prompt, every question kept

    again = run_app("eval", *args)  # resumed: nothing is scored or generated twice
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.count("benchmark results already in") == 2 and "all 3 answers already in" in again.stdout
    assert json.loads((out / "metrics.json").read_text(encoding="utf-8"))["benchmarks"]["models"] == bench["models"]


def test_one_lm_eval_subject_task_zero_shot(learned_run, tmp_path):
    out = tmp_path / "one"
    res = run_app("eval", "task=benchmark", f"models=[{learned_run.path}]", "benchmark_data=sample",
                  "benchmarks=[cmmlu_elementary_chinese]", "num_fewshot=0", "limit=3", "batch_size=2", f"output={out}")
    assert res.returncode == 0, res.stderr[-3000:]
    entry = json.loads((out / "metrics.json").read_text(encoding="utf-8"))["benchmarks"]["models"][learned_run.path.name]
    result = entry["cmmlu_elementary_chinese"]
    assert result["n"] == 3 and result["title"] == "CMMLU"
    assert {c: v["n"] for c, v in result["categories"].items()} == {"Social Science": 3, "China specific": 3}
    assert "cmmlu_elementary_chinese acc" in res.stdout


def test_hub_benchmarks_offline_are_one_clear_error(tmp_path):
    res = run_app("eval", "task=benchmark", "models=[/no/such/model]", "benchmarks=[ceval]", f"output={tmp_path}",
                  env={"HF_HUB_OFFLINE": "1"})
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr[-2000:]
    assert "could not load the data" in res.stderr and "benchmark_data.ceval=DIR" in res.stderr
