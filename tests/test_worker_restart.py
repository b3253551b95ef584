"""Two workers under `torchrun --nproc_per_node=2 --max-restarts=1` (gloo on CPU), each case against the adapter
of the uninterrupted 2-process run:
- a worker that dies: rank 1 killed (SIGKILL, as a dead node or an out-of-memory kill) at the start of step 15,
  between the checkpoints 10 and 20; torchrun restarts both workers, which resume from checkpoint-10 by
  themselves (trainer.resume=auto);
- SIGTERM to rank 1 alone during step 15: rank 0 learns it at the step's end, both stop after step 15 with one
  checkpoint-15 and exit 75; torchrun restarts them (75 is not 0) and they resume from checkpoint-15."""
from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import pytest

from conftest import TWO_PROCESSES, run_cli
from fault_points import finished, pause_env, popen, release, wait_paused
from llama2ft.core.faults import KILL_AT
from llama2ft.model.run_folder import RunDir
from test_train_e2e import assert_same_adapter

pytestmark = pytest.mark.slow
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "--max-restarts=1"]
COMMON = TWO_PROCESSES  # 20 steps, checkpoints 10 and 20
ONE_THREAD = {"OMP_NUM_THREADS": "1"}  # two processes on the 2 cores


@pytest.fixture(scope="module")
def straight(two_process_run) -> Path:
    """The uninterrupted 2-process run (accelerate launch, the same to the bit as under torchrun)."""
    return two_process_run.path


def test_torchrun_restarts_a_dead_worker_and_the_run_resumes_by_itself(straight, tmp_path):
    run = RunDir(tmp_path / "run")
    res = run_cli("train", *COMMON, f"hydra.run.dir={run.path}", launcher=TORCHRUN,
                  env={**ONE_THREAD, KILL_AT: "rank1:step-15"})
    assert res.returncode == 0, res.stderr[-3000:]
    assert "failed (exitcode: -9) local_rank: 1" in res.stderr, res.stderr[-3000:]  # rank 1 died, torchrun saw it
    assert f"resuming from {run.checkpoint(10)}" in res.stdout  # the restarted workers, by themselves
    assert run.read_metrics()["steps_this_run"] == 10 and run.read_state()["state"] == "finished"
    assert run.checkpoint_steps() == [20]
    assert_same_adapter(straight, run.path, atol=1e-6)


def test_sigterm_to_one_rank_stops_both_at_the_same_step(straight, tmp_path):
    run, pauses = RunDir(tmp_path / "run"), tmp_path / "pauses"
    proc = popen([*TORCHRUN[2:], "-m", "llama2ft.train", *COMMON, f"hydra.run.dir={run.path}"],
                 {**ONE_THREAD, **pause_env(pauses, "rank1:step-15")}, tmp_path / "log")
    rank1 = wait_paused(pauses, "rank1:step-15", proc)
    os.kill(rank1, signal.SIGTERM)
    release(pauses, "rank1:step-15")
    code, out, err = finished(proc)
    assert code == 0, err[-3000:]
    # rank 0 (the one that prints) never got the signal: it stopped at rank 1's step
    assert "SIGTERM received (on another rank): stopping after step 15 with a checkpoint" in out
    assert f"interrupted by SIGTERM at step 15 of 20: {run.checkpoint(15)} is complete" in out
    assert "failed (exitcode: 75)" in err  # torchrun restarted the workers that stopped
    assert f"resuming from {run.checkpoint(15)}" in out
    assert run.read_metrics()["steps_this_run"] == 5 and run.checkpoint_steps() == [20]
    assert_same_adapter(straight, run.path, atol=1e-6)
