"""Local C-Eval and CMMLU files (official release layouts): the embedded sample reads as its own subjects, every
mistake is one error naming the file and row (before any model loads), the subjects become lm-eval tasks with
lm-eval's own prompts, and lm-eval's results read as per-subject and per-category figures with their counts."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from conftest import run_app
from llama2ft import PROJECT_ROOT
from llama2ft.core.errors import DataError
from llama2ft.evaluation.benchmark_data import LAYOUTS, read_local, write_tasks
from llama2ft.evaluation.benchmark_subjects import categories, known_subjects

SAMPLE = PROJECT_ROOT / "data" / "benchmarks"
CEVAL, CMMLU = LAYOUTS["ceval"], LAYOUTS["cmmlu"]


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def test_the_embedded_sample_in_both_layouts():
    ceval, cmmlu = read_local(CEVAL, str(SAMPLE / "ceval"), 5), read_local(CMMLU, str(SAMPLE / "cmmlu"), 5)
    assert [s.task for s in ceval] == ["ceval-valid_high_school_chinese", "ceval-valid_middle_school_mathematics"]
    assert [s.task for s in cmmlu] == ["cmmlu_elementary_chinese", "cmmlu_elementary_mathematics"]
    assert all(len(s.scored) == 12 and len(s.dev) == 5 for s in ceval + cmmlu)
    answers = [r["answer"] for s in ceval for r in s.scored] + [r["Answer"] for s in cmmlu for r in s.scored]
    assert set(answers) == set("ABCD")  # the right letter varies: a model that always says A gets ~25%
    header = (SAMPLE / "cmmlu" / "test" / "elementary_chinese.csv").read_text(encoding="utf-8").splitlines()[0]
    assert header == ",Question,A,B,C,D,Answer"


def test_each_mistake_is_one_error_naming_file_and_row(tmp_path):
    good = "id,question,A,B,C,D,answer\n1,问题一,甲,乙,丙,丁,A\n2,问题二,甲,乙,丙,丁,B\n"
    cases = {
        "missing folder": (None, f"benchmark_data.ceval={tmp_path / 'no'}: folder not found"),
        "no subject file": ({"dev/x_dev.csv": good}, "no val/*_val.csv files"),
        "missing column": ({"val/x_val.csv": "id,question,A,B,C,answer\n1,q,a,b,c,A\n"}, "x_val.csv has no column 'D'"),
        "bad answer": ({"val/x_val.csv": good + "3,问题三,甲,乙,丙,丁,E\n"}, "x_val.csv row 3: answer 'E' is not one"),
        "empty question": ({"val/x_val.csv": good + "3, ,甲,乙,丙,丁,C\n"}, "x_val.csv row 3: the question cell is empty"),
        "empty subject": ({"val/x_val.csv": "id,question,A,B,C,D,answer\n"}, "x_val.csv has a header but no data rows"),
        "no dev file": ({"val/x_val.csv": good}, "x_dev.csv is missing: num_fewshot=2"),
        "short dev file": ({"val/x_val.csv": good, "dev/x_dev.csv": good.splitlines()[0] + "\n" + good.splitlines()[1]},
                           "x_dev.csv has 1 question(s): num_fewshot=2"),
    }
    for name, (files, needle) in cases.items():
        root = tmp_path / name.replace(" ", "_")
        for rel, text in (files or {}).items():
            write(root / rel, text)
        with pytest.raises(DataError, match=needle.replace("*", r"\*").replace("(", r"\(").replace(")", r"\)")):
            read_local(CEVAL, str(root if files else tmp_path / "no"), 2)
    cmmlu = write(tmp_path / "c" / "test" / "law.csv", ",Question,A,B,C,D,Answer\n0,问,a,b,c,d,a\n")
    with pytest.raises(DataError, match="law.csv row 1: Answer 'a' is not one of A, B, C, D"):
        read_local(CMMLU, str(cmmlu.parent.parent), 0)


def test_a_bad_file_stops_the_command_before_any_model_loads(tmp_path):
    write(tmp_path / "ceval" / "val" / "law_val.csv", "id,question,A,B,C,D,answer\n1,问,a,b,c,d,Z\n")
    res = run_app("eval", "task=benchmark", "models=[/no/such/model]", f"benchmark_data.ceval={tmp_path / 'ceval'}",
                  "num_fewshot=0", "benchmarks=[ceval]", f"output={tmp_path / 'out'}")
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr[-2000:]
    assert res.stderr.count("error:") == 1 and "law_val.csv row 1: answer 'Z'" in res.stderr
    assert "/no/such/model" not in res.stderr  # the model was never reached
    res = run_app("eval", "task=benchmark", "models=[/no/such/model]", "benchmark_data=sample",
                  "benchmarks=[cmmlu_chinese_history,ceval]", "num_fewshot=-1", "limit=0", f"output={tmp_path / 'o2'}")
    assert res.returncode == 2 and "num_fewshot=-1" in res.stderr and "limit=0" in res.stderr
    res = run_app("eval", "task=benchmark", "models=[/no/such/model]", "benchmark_data=sample",
                  "benchmarks=[cmmlu_chinese_history]", f"output={tmp_path / 'o3'}")
    assert res.returncode == 2 and "has no test/chinese_history.csv" in res.stderr, res.stderr[-2000:]


def test_subjects_become_lm_eval_tasks_with_lm_evals_prompts(tmp_path):
    """A subject lm-eval knows includes lm-eval's own task file; another gets the benchmark's description;
    every cell stays text ("007" is not 7)."""
    root = tmp_path / "ceval"
    write(root / "val" / "accountant_val.csv", "id,question,A,B,C,D,answer\n1,问题,007,0.50,1e3,丁,A\n")
    write(root / "val" / "my_exam_val.csv", "id,question,A,B,C,D,answer\n1,问题,甲,乙,丙,丁,B\n")
    files = write_tasks(read_local(CEVAL, str(root), 0), tmp_path / "tasks")
    configs = {p.name: yaml.safe_load(p.read_text(encoding="utf-8")) for p in files}
    own = configs["ceval-valid_accountant.yaml"]
    assert own["include"].endswith("lm_eval/tasks/ceval/ceval-valid_accountant.yaml") and "description" not in own
    mine = configs["ceval-valid_my_exam.yaml"]
    assert mine["include"].endswith("_default_ceval_yaml") and mine["description"].startswith("以下是中国关于my exam")
    assert configs["_ceval-valid.yaml"]["task"] == ["ceval-valid_accountant", "ceval-valid_my_exam"]
    assert "fewshot_split" not in mine  # num_fewshot=0 and no dev file
    row = json.loads(Path(own["dataset_kwargs"]["data_files"]["val"]).read_text(encoding="utf-8"))
    assert (row["A"], row["B"], row["C"]) == ("007", "0.50", "1e3")


def test_categories_cover_every_subject_lm_eval_has():
    lm_tasks = Path(__import__("lm_eval.tasks", fromlist=["x"]).__file__).parent
    for key, layout in LAYOUTS.items():
        group = yaml.safe_load((lm_tasks / key / f"_{layout.group}.yaml").read_text(encoding="utf-8"))
        assert {t[len(layout.prefix):] for t in group["task"]} == known_subjects(key)
    assert categories("ceval", "middle_school_mathematics") == ["STEM"]
    assert categories("ceval", "high_school_chinese") == ["Humanities"]
    assert categories("cmmlu", "elementary_chinese") == ["Social Science", "China specific"]
    assert categories("cmmlu", "my_own_subject") == ["Other"]


def fake_results(accs: dict[str, float], n: int = 10) -> dict:
    """lm-eval's results dict, as simple_evaluate returns it, for groups ceval-valid and cmmlu."""
    results = {t: {"alias": t, "acc,none": a, "acc_stderr,none": 0.1} for t, a in accs.items()}
    groups = {"ceval-valid": [t for t in accs if t.startswith("ceval")], "cmmlu": [t for t in accs if t.startswith("cmmlu")]}
    for g, ts in groups.items():
        results[g] = {"alias": g, "acc,none": sum(accs[t] for t in ts) / len(ts)}
    return {"results": results, "group_subtasks": groups,
            "n-samples": {t: {"original": n, "effective": n} for t in accs}}


def test_results_per_subject_and_category_with_deltas(tmp_path):
    from llama2ft.evaluation.benchmark_report import summarize, write_benchmark_report

    before = fake_results({"ceval-valid_middle_school_mathematics": 0.2, "ceval-valid_high_school_chinese": 0.4,
                           "cmmlu_elementary_chinese": 0.3, "cmmlu_elementary_mathematics": 0.5})
    after = fake_results({"ceval-valid_middle_school_mathematics": 0.6, "ceval-valid_high_school_chinese": 0.4,
                          "cmmlu_elementary_chinese": 0.7, "cmmlu_elementary_mathematics": 0.5})
    names = ["ceval-valid", "cmmlu"]
    s = summarize(after, names)
    assert s["ceval-valid"]["categories"] == {"STEM": {"score": 0.6, "n": 10}, "Humanities": {"score": 0.4, "n": 10}}
    assert s["cmmlu"]["categories"]["China specific"] == {"score": 0.7, "n": 10}
    assert s["cmmlu"]["n"] == 20 and s["cmmlu"]["subjects"]["elementary_chinese"] == {"score": 0.7, "n": 10}
    metrics = {"settings": {"num_fewshot": 5, "limit": None, "data": {"ceval": "/d/ceval"}},
               "models": {"base": summarize(before, names), "tuned": s}}
    write_benchmark_report(tmp_path, metrics, ["base", "tuned"])
    report = (tmp_path / "report.md").read_text(encoding="utf-8")
    assert "| C-Eval (ceval-valid) (acc) |  20 | 30.0% | 50.0% (+20.0 pp) |" in report
    assert any(line.startswith("| STEM ") and line.endswith("|  10 | 20.0% | 60.0% (+40.0 pp) |")
               for line in report.splitlines())
    assert "China specific" in report and "elementary_chinese" in report
    saved = json.loads((tmp_path / "metrics.json").read_text(encoding="utf-8"))
    assert saved["benchmarks"]["models"]["tuned"]["cmmlu"]["score"] == 0.6
    assert (tmp_path / "benchmarks.png").read_bytes()[:4] == b"\x89PNG"


def test_the_sample_is_what_its_script_builds(tmp_path):
    """data/benchmarks/ is written by scripts/build_benchmark_sample.py, deterministically: rebuilding it gives
    the committed files byte for byte (a hand edit or a changed script shows here)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("build_benchmark_sample",
                                                  PROJECT_ROOT / "scripts" / "build_benchmark_sample.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.build(tmp_path)
    built = {p.relative_to(tmp_path): p.read_bytes() for p in sorted(tmp_path.rglob("*.csv"))}
    committed = {p.relative_to(SAMPLE): p.read_bytes() for p in sorted(SAMPLE.rglob("*.csv"))}
    assert built.keys() == committed.keys() and len(built) == 8
    assert [k for k in built if built[k] != committed[k]] == []
