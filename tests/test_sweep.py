"""Multirun sweeps: a run folder per job, a summary at the sweep root, reruns skip or resume."""
from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import TrainedRun, run_app, run_cli
from llama2ft import PROJECT_ROOT

pytestmark = pytest.mark.slow
SWEEP = ["-m", "experiment=tiny_smoke", "lora=r8,r16", "trainer.learning_rate=1e-3,2e-3"]


def test_objective_direction_is_checked_with_the_other_problems():
    from conftest import compose
    from llama2ft.training.checks import training_problems

    assert training_problems(compose(["objective_direction=maximize"])) == []
    assert "objective_direction=up: must be one of minimize, maximize" in training_problems(
        compose(["objective_direction=up"]))
    # Optuna's direction is the run's
    assert compose(["hparams_search=optuna", "objective_direction=maximize"]).hydra.sweeper.direction == "maximize"
    assert compose(["hparams_search=optuna"]).hydra.sweeper.direction == "minimize"


def summary(sweep_dir):
    with (sweep_dir / "sweep_summary.csv").open(encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_two_by_two_sweep_summary_and_rerun_skips(tmp_path):
    sweep_dir = tmp_path / "sweep"
    res = run_app("train", *SWEEP, f"hydra.sweep.dir={sweep_dir}")  # Hydra runs the 4 jobs one after the other
    assert res.returncode == 0, res.stderr[-2000:]
    assert sorted(p.name for p in sweep_dir.iterdir() if p.is_dir()) == ["0", "1", "2", "3"]
    rows = summary(sweep_dir)
    assert len(rows) == 4 and all(r["status"] == "completed" for r in rows)
    losses = [float(r["eval_loss"]) for r in rows]
    assert losses == sorted(losses)  # best first
    assert {r["overrides"] for r in rows} == {f"experiment=tiny_smoke lora={r} trainer.learning_rate={lr}"
                                              for r in ("r8", "r16") for lr in ("0.001", "0.002")}
    assert all(int(r["trained_tokens"]) > 0 and float(r["runtime_s"]) > 0 for r in rows)
    md = (sweep_dir / "sweep_summary.md").read_text(encoding="utf-8")
    assert "| run | status |" in md
    assert md.count("Environment: python ") == 1 and all(r["environment"] == "" for r in rows)  # one environment

    stamp = (sweep_dir / "0" / "adapter" / "adapter_model.safetensors").stat().st_mtime_ns
    again = run_app("train", *SWEEP, f"hydra.sweep.dir={sweep_dir}")
    assert again.returncode == 0
    assert again.stdout.count("already completed with this config, skipping") == 4
    assert (sweep_dir / "0" / "adapter" / "adapter_model.safetensors").stat().st_mtime_ns == stamp

    (sweep_dir / "sweep_summary.csv").unlink()
    rebuilt = run_app("sweep", str(sweep_dir))  # llama2ft-sweep-summary
    assert rebuilt.returncode == 0 and summary(sweep_dir) == rows
    # a metric where higher is better (a GRPO run's reward_after, an accuracy): best first is the highest
    highest = run_app("sweep", str(sweep_dir), "--objective", "eval_loss", "--direction", "maximize")
    assert highest.returncode == 0 and summary(sweep_dir) == rows[::-1]
    assert "best first by `eval_loss` (higher is better)" in (sweep_dir / "sweep_summary.md").read_text()


def test_a_bad_run_fails_alone(tmp_path):
    sweep_dir = tmp_path / "sweep"
    good = PROJECT_ROOT / "data" / "sample" / "train.csv"
    res = run_app("train", "-m", "experiment=tiny_smoke", f"data.train_file={good},{tmp_path}/missing.csv",
                  f"hydra.sweep.dir={sweep_dir}")
    assert res.returncode == 0, res.stderr[-2000:]
    assert "Traceback" not in res.stderr
    status = {r["run"]: r["status"] for r in summary(sweep_dir)}
    assert status["0"] == "completed" and status["1"].startswith("failed: invalid config")


def test_killed_sweep_resumes_and_completes(tmp_path):
    sweep_dir = tmp_path / "sweep"
    # killed once checkpoint-20 is written (polled every 50 ms): 20 more steps (~1 s or more) keep it unfinished
    args = ["-m", "experiment=tiny_smoke", "trainer.max_steps=40", "trainer.save_steps=20",
            "trainer.eval_steps=1000", "lora=r8,r16", f"hydra.sweep.dir={sweep_dir}"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}  # a process of its own: kill -9
    proc = subprocess.Popen([sys.executable, "-m", "llama2ft.train", *args], cwd=PROJECT_ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpt = sweep_dir / "0" / "checkpoints" / "checkpoint-20" / "llama2ft-complete.json"
    deadline = time.time() + 300
    while not ckpt.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert ckpt.exists() and not (sweep_dir / "0" / "metrics.json").exists()

    res = run_app("train", *args)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "resuming from" in res.stdout
    assert [r["status"] for r in summary(sweep_dir)] == ["completed", "completed"]
    again = run_app("train", *args)  # the resumed run counts as completed with the same config
    assert again.returncode == 0 and again.stdout.count("already completed with this config, skipping") == 2


def test_optuna_search_of_three_trials(tmp_path):
    import yaml

    sweep_dir = tmp_path / "optuna"
    res = run_app("train", "hparams_search=optuna", "experiment=tiny_smoke", "hydra.sweeper.n_trials=3",
                  f"hydra.sweep.dir={sweep_dir}")
    assert res.returncode == 0, res.stderr[-2000:]
    results = yaml.safe_load((sweep_dir / "optimization_results.yaml").read_text())
    rows = summary(sweep_dir)
    assert len(rows) == 3 and all(r["status"] == "completed" for r in rows)
    assert results["best_value"] == pytest.approx(float(rows[0]["eval_loss"]), rel=1e-4)  # minimized eval loss
    assert set(results["best_params"]) == {"trainer.learning_rate", "lora.r", "lora.alpha", "lora.dropout"}


def test_a_run_reproduces_exactly_from_its_folder(smoke_run: TrainedRun, tmp_path):
    first, second = smoke_run.path, tmp_path / "second"  # first: the session's `experiment=tiny_smoke` run
    res = run_app("train", "--config-path", str(first), "--config-name", "config", f"hydra.run.dir={second}")
    assert res.returncode == 0, res.stderr[-2000:]
    name = "adapter/adapter_model.safetensors"
    assert (first / name).read_bytes() == (second / name).read_bytes()  # bit-identical on CPU


def test_sweep_under_accelerate_keeps_ranks_together(tmp_path):
    accelerate = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                  "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    # two processes on the 2 cores: one thread each (with 2 each, they wait on each other's threads)
    res = run_cli("train", "-m", "experiment=tiny_smoke", "trainer.max_steps=4", "lora=r8,r16", cwd=tmp_path,
                  launcher=accelerate, env={"OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stderr[-2000:]
    sweeps = list((tmp_path / "outputs" / "train" / "multirun").iterdir())
    assert len(sweeps) == 1  # both ranks agreed on one sweep folder
    assert [r["status"] for r in summary(sweeps[0])] == ["completed", "completed"]
