"""The studio's charts, drawn by training/plots.py (the drawing of loss.png) as inline SVG from log.jsonl:
a run's loss, learning rate and the method's own figures (rewards, preference accuracy, KL); the loss of
several runs overlaid; a sweep's objective per setting."""
from __future__ import annotations

import re
from typing import Any, Optional

from llama2ft.training.plots import Panel, figure, series, svg
from llama2ft.training.sweeps import DIRECTIONS

# what a method logs of its own: rewards/chosen, rewards/margins, reward, reward/<name>, preference_accuracy,
# rewards/accuracies, kl (and their eval_ forms)
METHOD_FIGURES = re.compile(r"^(eval_)?(rewards?([/_].*)?|.*accurac.*|kl)$")


def method_keys(entries: list[dict]) -> list[str]:
    return sorted({k for e in entries for k in e if METHOD_FIGURES.match(k)})


def run_panels(entries: list[dict]) -> list[Panel]:
    panels: list[Panel] = [
        ("loss", "loss", {"train loss": series(entries, "loss"), "eval loss": series(entries, "eval_loss")}),
        ("learning rate", "learning rate", {"learning rate": series(entries, "learning_rate")}),
    ]
    keys = method_keys(entries)
    if keys:
        panels.append(("method", "value", {k: series(entries, k) for k in keys}))
    return panels


def overlay_panels(runs: dict[str, list[dict]]) -> list[Panel]:
    """The loss of each run (train and eval), one chart."""
    curves: dict[str, Any] = {}
    for name, entries in runs.items():
        curves[f"{name}: train loss"] = series(entries, "loss")
        curves[f"{name}: eval loss"] = series(entries, "eval_loss")
    return [("loss", "loss", curves)]


def chart(panels: list[Panel], width: float = 4.6, height: float = 3.2) -> str:
    if not any(points for _, _, curves in panels for points in curves.values()):
        return '<div class="l2f-chart">no logged steps yet</div>'
    return f'<div class="l2f-chart">{svg(figure(panels, width=width, height=height))}</div>'


def objective_chart(rows: list[dict], objective: str, direction: str = "minimize") -> str:
    """A bar per completed run of a sweep: its objective, labelled with its overrides."""
    from matplotlib.figure import Figure

    done = [r for r in rows if isinstance(r.get(objective), (int, float))]
    common = set.intersection(*(set(r["overrides"].split()) for r in done)) if len(done) > 1 else set()
    done = [(f"{r['run']}: " + " ".join(o for o in r["overrides"].split() if o not in common), r[objective])
            for r in done]  # each bar says what its run set differently
    if not done:
        return f'<div class="l2f-chart">no completed run has {objective}</div>'
    fig = Figure(figsize=(8, 0.45 * len(done) + 1.2), dpi=100)
    ax = fig.subplots()
    labels, values = zip(*reversed(done))
    for bar in ax.barh(range(len(done)), values, color="#4c78a8"):
        bar.set_gid("objective-bar")  # a browser test counts them
    ax.set_yticks(range(len(done)), labels, fontsize=8)
    ax.set_xlabel(f"{objective} ({DIRECTIONS[direction]})")
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return f'<div class="l2f-chart">{svg(fig)}</div>'


def best(rows: list[dict], objective: str, direction: str = "minimize") -> Optional[dict]:
    done = [r for r in rows if isinstance(r.get(objective), (int, float))]
    if not done:
        return None
    return (min if direction == "minimize" else max)(done, key=lambda r: r[objective])
