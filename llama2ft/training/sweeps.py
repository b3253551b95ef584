"""Sweep summaries: one row per run of a Hydra multirun folder, best first; and whether a sweep
already completed a run with the same config (so that rerunning a sweep skips it)."""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any, Optional

import yaml
from omegaconf import DictConfig, OmegaConf

COLUMNS = ["run", "status", "overrides", "train_loss", "eval_loss", "exact_match_after", "trained_tokens",
           "runtime_s"]
FAILED_MARK = "FAILED"  # a file holding the error message of a run that stopped on bad input


def _json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def run_row(run: Path) -> dict[str, Any]:
    """The summary row of one run folder."""
    overrides = yaml.safe_load((run / ".hydra" / "overrides.yaml").read_text(encoding="utf-8")) \
        if (run / ".hydra" / "overrides.yaml").is_file() else []
    metrics, stats = _json(run / "metrics.json"), _json(run / "data_stats.json")
    if metrics:
        status = "completed"
    elif (run / FAILED_MARK).is_file():
        status = "failed: " + (run / FAILED_MARK).read_text(encoding="utf-8").strip().splitlines()[0][:120]
    else:
        status = "unfinished"
    trained = None
    if metrics and stats:  # trained tokens per epoch x epochs run
        trained = round(stats["trained_tokens"] * float(metrics.get("epoch", 0)))
    return {"run": run.name, "status": status, "overrides": " ".join(overrides or []),
            "train_loss": metrics.get("train_loss"), "eval_loss": metrics.get("eval_loss"),
            "exact_match_after": metrics.get("exact_match_after"), "trained_tokens": trained,
            "runtime_s": metrics.get("train_runtime")}


def collect(sweep_dir: Path, objective: str = "eval_loss") -> list[dict[str, Any]]:
    """Rows of every run folder under `sweep_dir`: completed runs first, best (lowest objective) first."""
    runs = [p for p in sweep_dir.iterdir() if p.is_dir() and (p / ".hydra").is_dir()]
    rows = [run_row(p) for p in runs]

    def key(row: dict) -> tuple:
        value = row.get(objective)
        missing = value is None or (isinstance(value, float) and math.isnan(value))
        return (row["status"] != "completed", missing, value if not missing else 0.0, row["run"])

    return sorted(rows, key=key)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)


def write(sweep_dir: Path, objective: str = "eval_loss") -> list[dict[str, Any]]:
    """Write sweep_summary.csv and sweep_summary.md at the sweep root; returns the rows."""
    rows = collect(sweep_dir, objective)
    with (sweep_dir / "sweep_summary.csv").open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    lines = [f"# Sweep {sweep_dir}", "", f"{len(rows)} runs, best first by `{objective}` (lower is better).", "",
             "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(_fmt(r[c]) for c in COLUMNS) + " |" for r in rows]
    (sweep_dir / "sweep_summary.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return rows


def finished_run(cfg: DictConfig, out_dir: Path) -> Optional[dict]:
    """The metrics of a run this sweep already completed with the same resolved config, else None."""
    saved = out_dir / "config.yaml"
    if not (out_dir / "metrics.json").is_file() or not saved.is_file():
        return None
    if OmegaConf.to_container(OmegaConf.load(saved)) != OmegaConf.to_container(cfg, resolve=True):
        return None
    return json.loads((out_dir / "metrics.json").read_text(encoding="utf-8"))
