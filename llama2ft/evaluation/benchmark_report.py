"""Benchmark results users can read: per model, per benchmark, per subject and per category (C-Eval's four,
CMMLU's five) the accuracy and the number of questions, in metrics.json, report.md (models side by side,
deltas against the first) and a chart; joined with a Chinese-answer evaluation of the same models into one
report when both were asked for (`task=[generate,benchmark]`).

Categories pool their subjects' questions (as lm-eval's groups do, `weight_by_size`); a benchmark's own score
is lm-eval's aggregate.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

from llama2ft.evaluation.benchmark_data import LAYOUTS
from llama2ft.evaluation.benchmark_subjects import CATEGORY_ORDER, categories
from llama2ft.evaluation.report import _bar_chart, _cell, _table, chart_labels, cjk_font, render_markdown

BENCHMARK_CHART = "benchmarks.png"
_SUMMARY_KEYS = (("chinese_answer_rate", "Chinese-answer rate"), ("exact_match", "exact match"),
                 ("eos_rate", "stopped at EOS"), ("degenerate_rate", "degenerate repetition"))


# ---------------------------------------------------------------- lm-eval results -> summary
def summarize(results: dict, names: list[str]) -> dict[str, dict]:
    """For each benchmark asked for: its metric and score (lm-eval's), its number of questions, its subjects
    (leaf tasks) and, for C-Eval and CMMLU, its categories."""
    out = {}
    for name in names:
        leaves = _leaves(results.get("group_subtasks", {}), name)
        metric, score = _primary(results["results"][name])
        subjects, pooled = {}, {}
        layout = next((lay for lay in LAYOUTS.values() if name == lay.group or name.startswith(lay.prefix)), None)
        for leaf in leaves:
            m, value = _primary(results["results"][leaf])
            n = int(results["n-samples"][leaf]["effective"])
            subject = leaf[len(layout.prefix):] if layout and leaf.startswith(layout.prefix) else leaf
            subjects[subject] = {"score": value, "n": n}
            for cat in categories(layout.key, subject) if layout else ():
                right, total = pooled.get(cat, (0.0, 0))
                pooled[cat] = (right + value * n, total + n)
        entry: dict[str, Any] = {"benchmark": layout.key if layout else name,
                                 "title": layout.title if layout else name, "metric": metric, "score": score,
                                 "n": sum(s["n"] for s in subjects.values()), "subjects": subjects}
        if layout:
            order = CATEGORY_ORDER[layout.key]
            entry["categories"] = {c: {"score": pooled[c][0] / pooled[c][1], "n": pooled[c][1]}
                                   for c in order if c in pooled and pooled[c][1]}
        out[name] = entry
    return out


def _leaves(group_subtasks: dict[str, list[str]], name: str) -> list[str]:
    """The tasks under a group, recursively; a task is its own leaf."""
    if name not in group_subtasks:
        return [name]
    return [leaf for child in group_subtasks[name] for leaf in _leaves(group_subtasks, child)]


def _primary(result: dict) -> tuple[str, float]:
    """The task's main metric: accuracy when it has one, else its first reported metric."""
    metrics = {k.split(",")[0]: v for k, v in result.items()
               if "," in k and "_stderr" not in k and isinstance(v, (int, float))}
    if not metrics:
        raise ValueError(f"no metric in lm-eval's result {sorted(result)}")
    key = "acc" if "acc" in metrics else next(iter(metrics))
    return key, float(metrics[key])


# ---------------------------------------------------------------- report.md, metrics.json, chart
def write_benchmark_report(out: Path, metrics: dict, model_names: list[str], chinese: Optional[dict] = None) -> None:
    """metrics.json ({"benchmarks": ...}, beside the Chinese-answer metrics when given), report.md, the chart."""
    out.mkdir(parents=True, exist_ok=True)
    combined = {**(chinese or {}), "benchmarks": metrics}
    (out / "metrics.json").write_text(json.dumps(combined, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    notes = plot_benchmarks(out, metrics, model_names)
    parts = []
    if chinese is not None:
        parts += summary_table(metrics, chinese, model_names)
        parts.append(render_markdown(chinese, model_names).replace("# Chinese answer evaluation", "# Chinese answers"))
    parts += render_benchmarks(metrics, model_names, notes)
    (out / "report.md").write_text("\n".join(parts), encoding="utf-8")


def summary_table(metrics: dict, chinese: dict, model_names: list[str]) -> list[str]:
    """One table of what changed: the Chinese-answer figures and every benchmark's score."""
    first = model_names[0]
    rows = []
    for key, label in _SUMMARY_KEYS:
        values = [chinese["models"][m]["overall"].get(key) for m in model_names]
        if any(v is not None for v in values):
            rows.append([label, *[_cell(v, values[0], "pct", i == 0) for i, v in enumerate(values)]])
    for name in next(iter(metrics["models"].values())):
        values = [metrics["models"][m][name]["score"] for m in model_names]
        n = metrics["models"][first][name]["n"]
        rows.append([f"{_title(metrics, name)} {metrics['models'][first][name]['metric']} (n={n})",
                     *[_cell(v, values[0], "pct", i == 0) for i, v in enumerate(values)]])
    return ["# Evaluation summary", "",
            f"Models: {', '.join(f'`{m}`' for m in model_names)}; deltas against `{first}`.", "",
            *_table(["", *model_names], rows, "l" + "r" * len(model_names)), ""]


def render_benchmarks(metrics: dict, model_names: list[str], chart_notes: Optional[list[str]] = None) -> list[str]:
    s = metrics["settings"]
    first = model_names[0]
    models = metrics["models"]
    data = ", ".join(f"{k} from {v}" for k, v in s["data"].items()) or "the datasets lm-eval names (hub)"
    questions = f"at most {s['limit']} questions per subject" if s["limit"] else "all questions"
    lines = ["# Benchmarks (lm-evaluation-harness)", "",
             f"{s['num_fewshot']}-shot, {questions}; data: {data}. Scored by lm-eval (log-likelihood of each choice); "
             f"deltas against `{first}` in percentage points. Categories pool their subjects' questions.", ""]
    for m in model_names:
        info = metrics.get("model_info", {}).get(m)
        if info:
            over = info.get("prompts_over_context")
            lines.append(f"- `{m}`: {info['dtype']} on {info['device']}" + (
                f"; {over} prompt(s) longer than its context of {info['context_length']} tokens, cut at the start "
                "by lm-eval" if over else ""))
    if metrics.get("model_info"):
        lines.append("")
    rows = []
    for name in models[first]:
        values = [models[m][name]["score"] for m in model_names]
        rows.append([f"{_title(metrics, name)} ({models[first][name]['metric']})", str(models[first][name]["n"]),
                     *[_cell(v, values[0], "pct", i == 0) for i, v in enumerate(values)]])
    lines += _table(["benchmark", "n", *model_names], rows, "lr" + "r" * len(model_names))
    for name in models[first]:
        for part, label in (("categories", "category"), ("subjects", "subject")):
            keys = list(models[first][name].get(part, {}))
            if not keys or (part == "subjects" and len(keys) == 1 and keys[0] == name):
                continue
            lines += ["", f"## {_title(metrics, name)} by {label}", ""]
            rows = []
            for key in keys:
                per = [models[m][name][part].get(key) for m in model_names]
                base = per[0]["score"] if per[0] else None
                rows.append([key, str(per[0]["n"]) if per[0] else "–",
                             *[_cell(p["score"] if p else None, base, "pct", i == 0) for i, p in enumerate(per)]])
            lines += _table([label, "n", *model_names], rows, "lr" + "r" * len(model_names))
    lines += ["", "## Chart", "", f"![Benchmark scores]({BENCHMARK_CHART})", ""]
    if chart_notes:
        lines += [f"Chart labels: {'; '.join(chart_notes)}.", ""]
    lines.append("lm-eval's own results (results.json, every question in samples_TASK.jsonl): `lm_eval/MODEL/`.")
    return lines + [""]


def _title(metrics: dict, name: str) -> str:
    entry = next(iter(metrics["models"].values()))[name]
    return f"{entry['title']} ({name})" if entry["title"] != name else name


def plot_benchmarks(out: Path, metrics: dict, model_names: list[str]) -> list[str]:
    """Grouped bars: each benchmark's score and its categories', one colour per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    font = cjk_font()
    legend, notes = chart_labels(model_names, "model", font is not None)
    models = metrics["models"]
    groups, series = [], {label: [] for label in legend}
    for name, entry in models[model_names[0]].items():
        parts = [(entry["title"], None), *((f"{entry['title']}\n{c}", c) for c in entry.get("categories", {}))]
        for label, cat in parts:
            groups.append(label)
            for legend_label, m in zip(legend, model_names):
                e = models[m][name]
                series[legend_label].append(e["score"] if cat is None else e["categories"].get(cat, {}).get("score"))
    with plt.rc_context({"font.family": ["DejaVu Sans", *([font] if font else [])]}):
        _bar_chart(plt, out / BENCHMARK_CHART, groups, series, "Benchmark accuracy (lm-eval)")
    return notes
