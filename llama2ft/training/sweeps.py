"""Sweep summaries: one row per run of a Hydra multirun folder, best first, the environment the jobs ran
under stated once and the jobs that ran under another flagged (from each run's provenance.json); and
whether a sweep already completed a run with the same config (so that rerunning a sweep skips it)."""
from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any, Optional

import yaml
from omegaconf import DictConfig, OmegaConf

from llama2ft.core import environment
from llama2ft.model.run_folder import RunDir

COLUMNS = ["run", "status", "overrides", "train_loss", "eval_loss", "exact_match_after", "reward_after",
           "preference_accuracy_after", "trained_tokens", "runtime_s", "environment"]
DIRECTIONS = {"minimize": "lower is better", "maximize": "higher is better"}
# the held-out figures after training that each method reports: SFT, GRPO, preference methods and reward models
AFTER = ("exact_match_after", "reward_after", "preference_accuracy_after")
HYDRA_DIR = ".hydra"  # Hydra's own record of a job (its overrides), beside the run's files


def run_row(path: Path) -> dict[str, Any]:
    """The summary row of one run folder."""
    run = RunDir(path)
    overrides_file = run / HYDRA_DIR / "overrides.yaml"
    overrides = yaml.safe_load(overrides_file.read_text(encoding="utf-8")) if overrides_file.is_file() else []
    metrics, stats = run.read_metrics(), run.read_stats()
    failure = run.failure()
    if metrics:
        status = "completed"
    elif failure is not None:
        status = "failed: " + (failure.splitlines() or [""])[0][:120]
    elif run.read_state().get("state") == "interrupted":  # by a stop signal, with a checkpoint to continue from
        status = f"interrupted at step {run.read_state().get('step')}"
    else:
        status = "unfinished"
    trained = None
    if metrics and "trained_tokens" in stats:  # trained tokens per epoch x epochs run (SFT rows)
        trained = round(stats["trained_tokens"] * float(metrics.get("epoch", 0)))
    return {"run": path.name, "status": status, "overrides": " ".join(overrides or []),
            "train_loss": metrics.get("train_loss"), "eval_loss": metrics.get("eval_loss"),
            **{key: metrics.get(key) for key in AFTER}, "trained_tokens": trained,
            "runtime_s": metrics.get("train_runtime"), "environment": ""}


def direction_problems(direction: Any) -> list[str]:
    if direction in DIRECTIONS:
        return []
    return [f"objective_direction={direction}: must be one of {', '.join(DIRECTIONS)}"]


def collect(sweep_dir: Path, objective: str = "eval_loss",
            direction: str = "minimize") -> tuple[list[dict[str, Any]], dict]:
    """Rows of every run folder under `sweep_dir`, completed runs first, best first by `objective`;
    and the environment most of them ran under (each row's `environment` says how its own differs)."""
    runs = [p for p in sweep_dir.iterdir() if p.is_dir() and (p / HYDRA_DIR).is_dir()]
    rows = [run_row(p) for p in runs]
    records = [RunDir(p).read_provenance() for p in runs]
    common = sweep_environment(records)
    for row, record in zip(rows, records):
        row["environment"] = environment_note(common, record)

    def key(row: dict) -> tuple:
        value = row.get(objective)
        missing = value is None or (isinstance(value, float) and math.isnan(value))
        rank = 0.0 if missing else (value if direction == "minimize" else -value)
        return (row["status"] != "completed", missing, rank, row["run"])

    return sorted(rows, key=key), common


def sweep_environment(records: list[dict]) -> dict:
    """The recorded environment that the most jobs share ({} when none recorded one)."""
    envs = sorted((r for r in records if r.get("packages")), key=lambda r: r.get("started") or "")
    return max(envs, key=lambda e: sum(not environment.differences(e, other) for other in envs), default={})


def environment_note(common: dict, record: dict) -> str:
    """How a job's environment differs from the sweep's ("" when it does not; a resume under another one
    counts too)."""
    if not record.get("packages"):
        return "not recorded"
    notes = [f"{what} {new} (sweep: {old})" for what, old, new in environment.differences(common, record)]
    notes += [f"resumed with {d}" for resume in record.get("resumed", []) for d in resume.get("differences", [])]
    return "; ".join(notes)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)


def write(sweep_dir: Path, objective: str = "eval_loss", direction: str = "minimize") -> list[dict[str, Any]]:
    """Write sweep_summary.csv and sweep_summary.md at the sweep root; returns the rows."""
    rows, common = collect(sweep_dir, objective, direction)
    with (sweep_dir / "sweep_summary.csv").open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    env = (f"Environment: {environment.summary(common)}. A job that ran under another says how in its `environment` "
           "column." if common else "Environment: not recorded (no job wrote a provenance.json).")
    lines = [f"# Sweep {sweep_dir}", "",
             f"{len(rows)} runs, best first by `{objective}` ({DIRECTIONS[direction]}).", "", env, "",
             "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(_fmt(r[c]) for c in COLUMNS) + " |" for r in rows]
    (sweep_dir / "sweep_summary.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return rows


def finished_run(cfg: DictConfig, out_dir: Path) -> Optional[dict]:
    """The metrics of a run this sweep already completed with the same resolved config, else None."""
    run = RunDir(out_dir)
    if not run.is_finished():
        return None
    if OmegaConf.to_container(run.read_config()) != OmegaConf.to_container(cfg, resolve=True):
        return None
    return run.read_metrics()
