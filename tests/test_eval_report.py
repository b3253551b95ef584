"""Evaluation output: resumable answers.jsonl, metrics.json, report.md tables with deltas, charts."""
from __future__ import annotations

import json
import os
import struct
import warnings

import pytest

from llama2ft.core.errors import DataError
from llama2ft.evaluation.metrics import aggregate, answer_metrics
from llama2ft.evaluation.report import (
    CLASS_CHART,
    OVERVIEW_CHART,
    _width,
    append_answer,
    chart_labels,
    cjk_font,
    plot_charts,
    read_answers,
    render_markdown,
    write_report,
)

ZH = "天空是蓝色的，因为阳光被空气散射。"
EN = "The sky is blue because air scatters sunlight."


def _metrics(with_reference: bool = False) -> dict:
    """base: 1 of 4 answers in Chinese; ft: 3 of 4 (one of them looping)."""
    answers = {"base": [("通用知识", EN), ("通用知识", ZH), ("逻辑推理", EN), ("逻辑推理", EN)],
               "ft": [("通用知识", ZH), ("通用知识", ZH), ("逻辑推理", "我是" * 20), ("逻辑推理", EN)]}
    rows = [{"model": model, "class": cls,
             "metrics": answer_metrics(text, text != EN, ZH if with_reference else None, 0.5)}
            for model, items in answers.items() for cls, text in items]
    return {**aggregate(rows), "threshold": 0.5}


def _png_size(path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_report_files_tables_and_deltas(tmp_path):
    metrics = _metrics()
    paths = write_report(tmp_path / "out", metrics, ["base", "ft"])
    assert {p.name for p in (tmp_path / "out").iterdir()} == {"metrics.json", "report.md", CLASS_CHART, OVERVIEW_CHART}
    assert json.loads(paths["metrics"].read_text(encoding="utf-8")) == metrics

    report = paths["report"].read_text(encoding="utf-8")
    lines = report.splitlines()
    assert "Deltas are against `base`" in report and "more than 50%" in report

    def row(first_cell: str, after: str = "") -> list[str]:
        start = lines.index(after) if after else 0
        line = next(x for x in lines[start:] if x.startswith(f"| {first_cell} "))
        return [c.strip() for c in line.strip("|").split("|")]

    assert row("metric") == ["metric", "base", "ft"]
    assert row("answers") == ["answers", "4", "4"]
    assert row("Chinese-answer rate") == ["Chinese-answer rate", "25.0%", "75.0% (+50.0 pp)"]
    assert row("degenerate repetition") == ["degenerate repetition", "0.0%", "25.0% (+25.0 pp)"]
    assert row("stopped at EOS") == ["stopped at EOS", "25.0%", "75.0% (+50.0 pp)"]
    assert row("empty answers") == ["empty answers", "0.0%", "0.0% (±0.0 pp)"]
    length = metrics["models"]["ft"]["overall"]["mean_length"] - metrics["models"]["base"]["overall"]["mean_length"]
    assert row("mean length (chars)")[2].endswith(f"(-{abs(length):.1f})") and length < 0
    assert not any(x.startswith(("| exact match", "| ROUGE-L")) for x in lines)  # no references

    by_class = "## Chinese-answer rate by class"
    assert row("class", by_class) == ["class", "n", "base", "ft"]
    assert row("通用知识 (general knowledge)", by_class) == ["通用知识 (general knowledge)", "2", "50.0%", "100.0% (+50.0 pp)"]
    assert row("逻辑推理 (logical reasoning)", by_class) == ["逻辑推理 (logical reasoning)", "2", "0.0%", "50.0% (+50.0 pp)"]
    assert row("**all**", by_class) == ["**all**", "4", "25.0%", "75.0% (+50.0 pp)"]
    assert "## degenerate repetition by class" in report and "## ROUGE-L (chars) by class" not in report
    assert f"]({CLASS_CHART})" in report and f"]({OVERVIEW_CHART})" in report

    # every table lines up in a terminal (Chinese characters are two columns wide)
    tables = [[x for x in block.splitlines() if x.startswith("|")] for block in report.split("\n\n")]
    for table in filter(None, tables):
        assert len({_width(x) for x in table}) == 1, table

    for name in (CLASS_CHART, OVERVIEW_CHART):
        width, height = _png_size(tmp_path / "out" / name)
        assert width >= 600 and height >= 400
        assert (tmp_path / "out" / name).stat().st_size > 10_000


def test_reference_metrics_and_a_missing_class(tmp_path):
    metrics = _metrics(with_reference=True)
    metrics["models"]["ft"]["by_class"].pop("逻辑推理")
    report = render_markdown(metrics, ["ft", "base"])
    assert "Deltas are against `ft`" in report
    assert "| exact match" in report and "## ROUGE-L (chars) by class" in report
    line = next(x for x in report.splitlines() if x.startswith("| 逻辑推理"))
    assert [c.strip() for c in line.strip("|").split("|")] == ["逻辑推理 (logical reasoning)", "2", "–", "0.0%"]


def test_single_model_has_no_deltas(tmp_path):
    report = render_markdown(_metrics(), ["ft"])
    assert "Deltas" not in report and " pp)" not in report


def test_unknown_model_is_refused(tmp_path):
    with pytest.raises(ValueError, match="nope"):
        write_report(tmp_path, _metrics(), ["base", "nope"])


def test_chart_labels():
    assert chart_labels(["通用知识", "custom", "自定义"], "class", cjk=False) == (
        ["general knowledge", "custom", "class 3"], ["class 3 = 自定义"])
    assert chart_labels(["通用知识", "自定义"], "class", cjk=True) == (["通用知识\ngeneral knowledge", "自定义"], [])
    assert chart_labels(["基座", "ft"], "model", cjk=False) == (["model 1", "ft"], ["model 1 = 基座"])


def _plot_without_missing_glyphs(tmp_path, cjk):
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*missing from font")  # a tofu box would be drawn
        return plot_charts(tmp_path, _metrics(), ["base", "ft"], cjk=cjk)


def test_charts_without_a_cjk_font_use_english_labels(tmp_path):
    assert _plot_without_missing_glyphs(tmp_path, cjk=False) == []
    assert _png_size(tmp_path / CLASS_CHART)[0] > 0


def test_charts_with_the_installed_cjk_font(tmp_path):
    if cjk_font() is None:
        # CI installs the font and sets LLAMA2FT_REQUIRE_CJK_FONT: there the test must run
        assert not os.environ.get("LLAMA2FT_REQUIRE_CJK_FONT"), "LLAMA2FT_REQUIRE_CJK_FONT is set but no CJK font"
        pytest.skip("no CJK font installed (Debian: apt-get install fonts-wqy-microhei)")
    assert _plot_without_missing_glyphs(tmp_path, cjk=None) == []


def test_answers_jsonl_round_trip_and_resume_after_a_killed_run(tmp_path):
    path = tmp_path / "run" / "answers.jsonl"
    assert read_answers(path) == []
    first = {"qid": "1", "model": "base", "answer": "四百零七"}
    second = {"qid": "2", "model": "base", "answer": "好"}
    append_answer(path, first)
    append_answer(path, second)
    assert "四百零七" in path.read_text(encoding="utf-8")  # readable, not \u escapes
    assert read_answers(path) == [first, second]

    with open(path, "ab") as f:  # a run killed in the middle of writing row 3
        f.write(b'{"qid": "3", "mod')
    assert read_answers(path) == [first, second]
    third = {"qid": "3", "model": "base", "answer": "再见"}
    append_answer(path, third)
    assert read_answers(path) == [first, second, third]
    assert path.read_text(encoding="utf-8").count("\n") == 3


def test_append_replaces_a_file_that_is_only_a_partial_line(tmp_path):
    path = tmp_path / "answers.jsonl"
    path.write_bytes(b'{"qid": "1", "ans')
    assert read_answers(path) == []
    append_answer(path, {"qid": "1"})
    assert path.read_text(encoding="utf-8") == '{"qid": "1"}\n'


@pytest.mark.parametrize("content, where", [
    ('{"qid": "1"}\nnot json\n{"qid": "3"}\n', "line 2 is not valid JSON"),
    ('{"qid": "1"}\n\n[1, 2]\n', "line 3: expected a JSON object, got list"),
])
def test_corrupt_answers_file(tmp_path, content, where):
    path = tmp_path / "answers.jsonl"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(DataError, match=where) as info:
        read_answers(path)
    assert str(path) in str(info.value)
