"""Curves of a run from its log.jsonl (model/run_folder.py: RunDir.read_log): loss.png, and the charts the
studio draws live (the same drawing, as SVG). Built on matplotlib's Figure, not pyplot: no global state,
so a server's threads can draw at once."""
from __future__ import annotations

import io
import re
from pathlib import Path
from typing import Any

Points = list[tuple[float, float]]
Panel = tuple[str, str, dict[str, Points]]  # a chart's title, its y axis and its curves by label


def series(entries: list[dict], key: str) -> Points:
    """(step, value) of the logged events that have `key`, by step; of several at one step (the eval of the
    last step and the final evaluation) the last."""
    by_step = {float(e["step"]): float(e[key]) for e in entries
               if "step" in e and isinstance(e.get(key), (int, float)) and not isinstance(e.get(key), bool)}
    return sorted(by_step.items())


def curve_id(label: str) -> str:
    """The id of a curve's group in the SVG (a browser test finds a curve and counts its points by it)."""
    return "curve-" + re.sub(r"[^a-z0-9]+", "-", label.lower()).strip("-")


def figure(panels: list[Panel], title: str = "", width: float = 6.0, height: float = 4.0) -> Any:
    """One chart per panel, side by side. An eval curve (its label's last part starts with "eval") is drawn with
    markers (few points); curves labelled `RUN: what` share a colour per RUN (train solid, eval dashed)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width * len(panels), height), dpi=100)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (name, ylabel, curves) in zip(axes, panels):
        runs = list(dict.fromkeys(label.rpartition(": ")[0] for label in curves))
        for i, (label, points) in enumerate(curves.items()):
            run, _, what = label.rpartition(": ")
            evals = what.startswith("eval")
            colour = f"C{runs.index(run) % 10}" if run else f"C{i % 10}"
            if points:
                (line,) = ax.plot(*zip(*points), label=label, color=colour, marker="o" if evals else None,
                                  linestyle="--" if evals and run else "-", markersize=4)
                line.set_gid(curve_id(label))
        ax.set_xlabel("step")
        ax.set_ylabel(ylabel)
        ax.set_title(name)
        ax.grid(alpha=0.3)
        if any(curves.values()):
            ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def svg(fig: Any) -> str:
    """The figure as an inline <svg> element (text kept as text)."""
    import matplotlib

    buf = io.StringIO()
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": "llama2ft"}):
        fig.savefig(buf, format="svg")
    text = buf.getvalue()
    return text[text.index("<svg"):]


def plot_loss(entries: list[dict], path: Path) -> None:
    """loss.png: training and eval loss by step, from the run's log events."""
    curves = {"train loss": series(entries, "loss"), "eval loss": series(entries, "eval_loss")}
    figure([("llama2ft training loss", "loss", curves)]).savefig(path)
