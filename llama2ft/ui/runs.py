"""The runs and sweeps under the studio's runs_dir, read through the run-folder owner (model/run_folder.py)
and the sweep summary (training/sweeps.py): a table row per run, a sweep's summary, a run's progress (step of
max_steps, elapsed, ETA from log.jsonl and state.json) and the command that continues it."""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Optional

import yaml

from llama2ft.model.run_folder import RunDir
from llama2ft.training.sweeps import HYDRA_DIR, run_row

SWEEP_MARKERS = ("multirun.yaml", "sweep_summary.csv")  # Hydra's record of a multirun; the summary llama2ft writes
RUN_COLUMNS = ["run", "status", "method", "overrides", "train_loss", "eval_loss", "after training", "runtime_s",
               "updated"]
_SKIP = {"checkpoints", "adapter", "model", "tokenizer", "base_model", "adapter_init", HYDRA_DIR, "wandb", "uploads"}


@dataclass
class Found:
    runs: list[Path]  # run folders (config.yaml) outside sweeps, newest first
    sweeps: list[Path]  # multirun folders, newest first


def find(runs_dir: Path, depth: int = 4) -> Found:
    """Run folders and sweep folders under `runs_dir` (a sweep's own runs are listed with the sweep)."""
    runs, sweeps = [], []
    root = Path(runs_dir)
    for folder, subdirs, files in os.walk(root, followlinks=True):
        path = Path(folder)
        level = len(path.relative_to(root).parts)
        if any(m in files for m in SWEEP_MARKERS) and level > 0:
            sweeps.append(path)
            subdirs.clear()
        elif RunDir.CONFIG in files:
            runs.append(path)
            subdirs.clear()
        else:
            subdirs[:] = [d for d in subdirs if not d.startswith(".") and d not in _SKIP] if level < depth else []
    newest = lambda p: p.stat().st_mtime  # noqa: E731
    return Found(sorted(runs, key=newest, reverse=True), sorted(sweeps, key=newest, reverse=True))


def label(path: Path, runs_dir: Path) -> str:
    try:
        return str(Path(path).relative_to(runs_dir))
    except ValueError:
        return str(path)


def status(path: Path, running: bool = False) -> str:
    """What the run is doing: running (a job of this studio), completed, interrupted at step N (its checkpoint),
    failed, or unfinished (stopped outside training, or trained by another process right now)."""
    if running:
        return "running"
    text = run_row(Path(path))["status"]
    state = RunDir(path).read_state()
    if state.get("state") == "interrupted" and state.get("checkpoint"):
        text += f" ({Path(state['checkpoint']).name})"
    return text


def _after(metrics: dict) -> str:
    keys = [k for k in metrics if k.endswith("_after") and isinstance(metrics[k], (int, float))]
    return ", ".join(f"{k.removesuffix('_after')} {metrics[k]:.3g}" for k in keys)


def row(path: Path, runs_dir: Path, running: bool = False) -> list[Any]:
    base = run_row(Path(path))
    run = RunDir(path)
    metrics = run.read_metrics()
    method = (run.read_config().get("method") or {}).get("name", "") if run.is_run() else ""
    updated = time.strftime("%Y-%m-%d %H:%M", time.localtime(Path(path).stat().st_mtime))
    return [label(path, runs_dir), status(path, running), method, base["overrides"], _num(base["train_loss"]),
            _num(base["eval_loss"]), _after(metrics), _num(base["runtime_s"]), updated]


def _num(value: Any) -> Any:
    return float(f"{value:.4g}") if isinstance(value, float) else ("" if value is None else value)


def overrides(path: Path) -> list[str]:
    """The overrides the run was started with (Hydra's .hydra/overrides.yaml)."""
    file = Path(path) / HYDRA_DIR / "overrides.yaml"
    return list(yaml.safe_load(file.read_text(encoding="utf-8")) or []) if file.is_file() else []


def resume_args(path: Path) -> list[str]:
    """The same command again for a run folder: its overrides and the folder (trainer.resume=auto continues)."""
    return [*[o for o in overrides(path) if not o.startswith("hydra.run.dir=")], f"hydra.run.dir={path}"]


@dataclass
class Progress:
    step: int
    total: int
    elapsed_s: float  # of the current (or last) attempt
    eta_s: Optional[float]
    state: str

    def text(self) -> str:
        if self.state == "training" and not self.step:
            return f"step 0/{self.total or '?'} · starting (data, model) · elapsed {_clock(self.elapsed_s)}"
        share = f" ({self.step / self.total:.0%})" if self.total > 0 else ""
        eta = f" · ETA {_clock(self.eta_s)}" if self.eta_s is not None and self.state == "training" else ""
        return f"step {self.step}/{self.total}{share} · elapsed {_clock(self.elapsed_s)}{eta}"


def _clock(seconds: float) -> str:
    seconds = int(max(0, seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def _when(text: Optional[str]) -> Optional[float]:
    try:
        return datetime.strptime(str(text), "%Y-%m-%dT%H:%M:%S%z").timestamp()
    except ValueError:
        return None


def progress(path: Path, running: bool, started: Optional[float] = None, now: Optional[float] = None) -> Progress:
    """Step of max_steps from log.jsonl; elapsed since `started` (when this studio started the process) or since
    training began (state.json's time); ETA at the rate of the steps logged since training began."""
    now = time.time() if now is None else now
    run = RunDir(path)
    entries, state = run.read_log(), run.read_state()
    last = entries[-1] if entries else {}
    step, total = int(last.get("step", state.get("step", 0)) or 0), int(last.get("max_steps", 0) or 0)
    if not total and run.is_run():  # nothing logged yet: the steps the config asks for (-1: by epochs, not known)
        total = max(0, int(run.read_config().trainer.max_steps))
    begun = _when(state.get("time")) if state.get("state") == "training" else None
    attempt = [e for e in entries if begun is None or e.get("time", 0) >= begun]
    end = now if running else (attempt[-1]["time"] if attempt else now)
    if running and started is not None:
        elapsed = now - started
    elif begun is not None:
        elapsed = end - begun
    else:  # stopped: the time its log spans (a finished run: its wall time)
        elapsed = run.read_metrics().get("wall_seconds") or (entries[-1]["time"] - entries[0]["time"] if entries else 0)
    eta = None
    trained = [e for e in attempt if "loss" in e]
    if begun is not None and trained:
        first_step = _checkpoint_step(state.get("resumed_from"))
        done = trained[-1]["step"] - first_step
        if done > 0:
            eta = (total - trained[-1]["step"]) * (trained[-1]["time"] - begun) / done + (trained[-1]["time"] - end)
            eta = max(0.0, eta)
    shown = "training" if running else (state.get("state") or ("finished" if run.is_finished() else "not started"))
    return Progress(step, total, elapsed, eta, shown)


def _checkpoint_step(checkpoint: Optional[str]) -> int:
    name = Path(str(checkpoint)).name if checkpoint else ""
    suffix = name.removeprefix(RunDir.CHECKPOINT_PREFIX)
    return int(suffix) if suffix.isdigit() else 0
