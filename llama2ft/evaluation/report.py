"""Evaluation output: answers.jsonl (resumable), metrics.json, report.md and PNG bar charts."""
from __future__ import annotations

import functools
import json
import os
import re
import unicodedata
from pathlib import Path
from typing import Any, Optional

from llama2ft.core.errors import DataError
from llama2ft.evaluation.questions import CLASS_NAMES_EN

ANSWERS_FILE = "answers.jsonl"
CLASS_CHART = "chinese_rate_by_class.png"
OVERVIEW_CHART = "overview.png"

# (key in a summary, label, "pct" for a 0..1 share shown in %, "num" for a plain number)
_OVERALL = (
    ("chinese_answer_rate", "Chinese-answer rate", "pct"),
    ("mean_chinese_share", "mean Chinese share", "pct"),
    ("eos_rate", "stopped at EOS", "pct"),
    ("degenerate_rate", "degenerate repetition", "pct"),
    ("empty_rate", "empty answers", "pct"),
    ("mean_length", "mean length (chars)", "num"),
    ("exact_match", "exact match", "pct"),
    ("rouge_l", "ROUGE-L (chars)", "pct"),
)
_BY_CLASS = ("chinese_answer_rate", "mean_chinese_share", "degenerate_rate", "rouge_l")
_OVERVIEW = ("chinese_answer_rate", "mean_chinese_share", "eos_rate", "degenerate_rate", "empty_rate",
             "exact_match", "rouge_l")
_LABELS = {key: label for key, label, _ in _OVERALL}
_KINDS = {key: kind for key, _, kind in _OVERALL}
# Families that cover Chinese, best first (Debian: fonts-wqy-microhei, fonts-noto-cjk).
_CJK_FAMILIES = ("WenQuanYi Micro Hei", "WenQuanYi Zen Hei", "Noto Sans CJK SC", "Noto Sans SC",
                 "Source Han Sans SC", "Source Han Sans CN", "Droid Sans Fallback", "Microsoft YaHei",
                 "SimHei", "PingFang SC", "Heiti SC", "Arial Unicode MS")
_CJK_FILE = re.compile(r"wqy|cjk|sourcehan|droidsansfallback|msyh|simhei|pingfang", re.IGNORECASE)


# ---------------------------------------------------------------- answers.jsonl

def read_answers(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The rows of an answers.jsonl ([] if it does not exist). An unterminated last line (a run
    killed mid-write) is ignored, so that answer is generated again; any other bad line raises."""
    path = Path(path)
    if not path.exists():
        return []
    text = path.read_text(encoding="utf-8")
    lines = text.split("\n")
    if not text.endswith("\n"):
        lines.pop()  # the partial row of a killed run (append_answer overwrites it)
    rows = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path} line {number} is not valid JSON ({exc.msg}); delete that line "
                            "(its answer is then generated again) or the whole file") from None
        if not isinstance(row, dict):
            raise DataError(f"{path} line {number}: expected a JSON object, got {type(row).__name__}")
        rows.append(row)
    return rows


def append_answer(path: str | os.PathLike[str], row: dict[str, Any]) -> None:
    """Append one row and flush it, so a killed run loses at most the answer being written.
    A partial last line left by such a run is cut off first."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = (json.dumps(row, ensure_ascii=False) + "\n").encode("utf-8")
    with open(path, "r+b" if path.exists() else "wb") as f:
        end = f.seek(0, os.SEEK_END)
        if end:
            f.seek(end - 1)
            if f.read(1) != b"\n":
                f.seek(0)
                keep = f.read().rfind(b"\n") + 1  # 0 when the file is one partial line
                f.truncate(keep)
                f.seek(keep)
        f.write(line)
        f.flush()


# ---------------------------------------------------------------- report

def write_report(out_dir: str | os.PathLike[str], metrics: dict[str, Any], model_names: list[str]) -> dict[str, Path]:
    """Write metrics.json, report.md and the charts; returns their paths by name.

    `metrics` is `eval_metrics.aggregate`'s result (optional extra keys, e.g. `threshold`, are kept
    in metrics.json; `threshold` is also named in the report). Deltas are against `model_names[0]`.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    missing = [m for m in model_names if m not in metrics["models"]]
    if not model_names or missing:
        raise ValueError(f"no metrics for model(s) {missing}" if missing else "no models to report")
    paths = {"metrics": out / "metrics.json", "report": out / "report.md"}
    paths["metrics"].write_text(json.dumps(metrics, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    notes = plot_charts(out, metrics, model_names)
    paths["report"].write_text(render_markdown(metrics, model_names, notes), encoding="utf-8")
    paths["class_chart"], paths["overview_chart"] = out / CLASS_CHART, out / OVERVIEW_CHART
    return paths


def render_markdown(metrics: dict[str, Any], model_names: list[str], chart_notes: Optional[list[str]] = None) -> str:
    models = metrics["models"]
    first = model_names[0]
    threshold = metrics.get("threshold")
    rule = f"more than {threshold:.0%}" if isinstance(threshold, (int, float)) else "most"
    lines = [
        "# Chinese answer evaluation",
        "",
        f"Models: {', '.join(f'`{m}`' for m in model_names)}."
        + (f" Deltas are against `{first}`." if len(model_names) > 1 else ""),
        f"A *Chinese answer* has {rule} of its letters (not digits, punctuation or spaces) in Chinese characters; "
        "*degenerate* answers loop or repeat themselves; *stopped at EOS* answers ended before the token limit.",
        "",
    ]
    for name, qids in (metrics.get("skipped_too_long") or {}).items():
        lines.append(f"Left out for `{name}`: {len(qids)} question(s) longer than its context (qid "
                     f"{', '.join(qids[:20])}{', ...' if len(qids) > 20 else ''}).")
    lines += ["", "## Overall", ""]
    keys = [(k, label, kind) for k, label, kind in _OVERALL if any(k in models[m]["overall"] for m in model_names)]
    rows = [["answers", *[str(models[m]["overall"]["n"]) for m in model_names]]]
    for key, label, kind in keys:
        base = models[first]["overall"].get(key)
        rows.append([label, *[_cell(models[m]["overall"].get(key), base, kind, m == first) for m in model_names]])
    lines += _table(["metric", *model_names], rows, "l" + "r" * len(model_names))

    for key in _BY_CLASS:
        if not any(key in models[m]["overall"] for m in model_names):
            continue
        lines += ["", f"## {_LABELS[key]} by class", ""]
        rows = []
        for cls in metrics["classes"]:
            per = [models[m]["by_class"].get(cls) for m in model_names]
            ns = sorted({str(s["n"]) for s in per if s})
            base = per[0].get(key) if per[0] else None
            rows.append([_class_label(cls), "/".join(ns),
                         *[_cell(s.get(key) if s else None, base, _KINDS[key], i == 0) for i, s in enumerate(per)]])
        overall = [models[m]["overall"] for m in model_names]
        rows.append(["**all**", "/".join(sorted({str(s["n"]) for s in overall})),
                     *[_cell(s.get(key), overall[0].get(key), _KINDS[key], i == 0) for i, s in enumerate(overall)]])
        lines += _table(["class", "n", *model_names], rows, "lr" + "r" * len(model_names))

    lines += ["", "## Charts", "", f"![Chinese-answer rate by class]({CLASS_CHART})", "",
              f"![Overview]({OVERVIEW_CHART})", ""]
    if chart_notes:
        lines += [f"Chart labels: {'; '.join(chart_notes)}.", ""]
    return "\n".join(lines)


def _cell(value: Optional[float], base: Optional[float], kind: str, is_first: bool) -> str:
    """`83.3%`, with the delta to the first model: `83.3% (+12.5 pp)`; `–` when there is no value."""
    if value is None:
        return "–"
    if kind == "pct":
        text = f"{value * 100:.1f}%"
        delta = None if base is None else f"{_signed((value - base) * 100, 1)} pp"
    else:
        text = f"{value:.1f}"
        delta = None if base is None else _signed(value - base, 1)
    return text if is_first or delta is None else f"{text} ({delta})"


def _signed(x: float, digits: int) -> str:
    text = f"{abs(x):.{digits}f}"
    if float(text) == 0:
        return f"±{text}"
    return ("+" if x > 0 else "-") + text


def _class_label(cls: str) -> str:
    english = CLASS_NAMES_EN.get(cls)
    return f"{cls} ({english})" if english else cls


def _width(text: str) -> int:
    """Terminal columns: Chinese characters are two wide."""
    return sum(2 if unicodedata.east_asian_width(ch) in "WF" else 1 for ch in text)


def _table(header: list[str], rows: list[list[str]], align: str) -> list[str]:
    """A GitHub markdown table whose columns also line up in a terminal."""
    header = [h.replace("|", "\\|") for h in header]
    rows = [[c.replace("|", "\\|") for c in r] for r in rows]
    widths = [max(3, *(_width(r[i]) for r in [header, *rows])) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        padded = [c + " " * (w - _width(c)) if a == "l" else " " * (w - _width(c)) + c
                  for c, w, a in zip(cells, widths, align)]
        return "| " + " | ".join(padded) + " |"

    rule = "| " + " | ".join("-" * (w - 1) + ":" if a == "r" else "-" * w for w, a in zip(widths, align)) + " |"
    return [line(header), rule, *(line(r) for r in rows)]


# ---------------------------------------------------------------- charts

@functools.lru_cache(maxsize=1)
def cjk_font() -> Optional[str]:
    """The family name of an installed font with Chinese glyphs, or None."""
    from matplotlib import font_manager

    manager = font_manager.fontManager
    known = {f.name for f in manager.ttflist}
    for family in _CJK_FAMILIES:
        if family in known:
            return family
    # matplotlib caches its font list; a font installed after that cache was built is only on disk.
    for path in sorted(font_manager.findSystemFonts()):
        if _CJK_FILE.search(Path(path).name):
            try:
                manager.addfont(path)
                return font_manager.FontProperties(fname=path).get_name()
            except (OSError, RuntimeError, ValueError):
                continue
    return None


def _needs_cjk(text: str) -> bool:
    return any(unicodedata.east_asian_width(ch) in "WF" for ch in text)


def chart_labels(names: list[str], kind: str, cjk: bool) -> tuple[list[str], list[str]]:
    """Labels that render without tofu boxes: Chinese class names get their English name below
    (or instead, without a CJK font); other unrenderable names become `{kind} N`. Also returns
    notes naming what such a placeholder stands for."""
    labels, notes = [], []
    for i, name in enumerate(names, 1):
        english = CLASS_NAMES_EN.get(name) if kind == "class" else None
        if not _needs_cjk(name):
            labels.append(name)
        elif english:
            labels.append(f"{name}\n{english}" if cjk else english)
        elif cjk:
            labels.append(name)
        else:
            labels.append(f"{kind} {i}")
            notes.append(f"{kind} {i} = {name}")
    return labels, notes


def plot_charts(out_dir: Path, metrics: dict[str, Any], model_names: list[str],
                cjk: Optional[bool] = None) -> list[str]:
    """Draw CLASS_CHART and OVERVIEW_CHART into `out_dir`; returns notes on placeholder labels.
    `cjk=None` uses a CJK font when one is installed; False forces English/placeholder labels."""
    import matplotlib

    matplotlib.use("Agg")  # no display on servers
    import matplotlib.pyplot as plt

    font = cjk_font() if cjk is not False else None
    models = metrics["models"]
    legend, model_notes = chart_labels(model_names, "model", font is not None)
    classes = metrics["classes"]
    class_labels, class_notes = chart_labels(classes, "class", font is not None)
    # DejaVu Sans first keeps Latin text as in the other plots; matplotlib falls back per glyph, but
    # only along font.family itself (a generic family like sans-serif resolves to one font).
    rc = {"font.family": ["DejaVu Sans", *([font] if font else [])]}
    with plt.rc_context(rc):
        series = {label: [models[m]["by_class"].get(c, {}).get("chinese_answer_rate") for c in classes]
                  + [models[m]["overall"]["chinese_answer_rate"]] for label, m in zip(legend, model_names)}
        _bar_chart(plt, out_dir / CLASS_CHART, [*class_labels, "all"], series,
                   "Chinese-answer rate by class", separate_last=True)
        keys = [k for k in _OVERVIEW if any(k in models[m]["overall"] for m in model_names)]
        series = {label: [models[m]["overall"].get(k) for k in keys] for label, m in zip(legend, model_names)}
        _bar_chart(plt, out_dir / OVERVIEW_CHART, [_LABELS[k] for k in keys], series,
                   "Answers per model (higher is better, except degenerate and empty)")
    return class_notes + model_notes


def _bar_chart(plt: Any, path: Path, groups: list[str], series: dict[str, list[Optional[float]]],
               title: str, separate_last: bool = False) -> None:
    """Grouped bars of 0..1 values shown in %, one colour per series, values written on the bars."""
    n_series = len(series)
    width = 0.8 / n_series
    fig, ax = plt.subplots(figsize=(min(20.0, max(6.0, 1.0 + len(groups) * (0.5 + 0.35 * n_series))), 4.8), dpi=110)
    colors = plt.get_cmap("tab10").colors
    for j, (label, values) in enumerate(series.items()):
        xs = [i + (j - (n_series - 1) / 2) * width for i in range(len(groups))]
        heights = [0.0 if v is None else v * 100 for v in values]
        bars = ax.bar(xs, heights, width * 0.92, label=label, color=colors[j % len(colors)])
        if n_series <= 4:
            texts = ["–" if v is None else f"{v * 100:.0f}" for v in values]
            ax.bar_label(bars, labels=texts, padding=2, fontsize=7, color="#333333")
    if separate_last:
        ax.axvline(len(groups) - 1.5, color="#999999", linestyle=":", linewidth=1)
    ax.set_xticks(range(len(groups)), groups, fontsize=8)
    ax.set_ylim(0, 112)
    ax.set_yticks(range(0, 101, 20), [f"{t}%" for t in range(0, 101, 20)])
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    ax.spines[["top", "right"]].set_visible(False)
    ax.set_title(title, fontsize=11)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16 if any("\n" in g for g in groups) else -0.1),
              ncol=min(n_series, 4), frameon=False, fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
