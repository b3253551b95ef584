"""A worker that dies: `torchrun --nproc_per_node=2 --max-restarts=1` (gloo on CPU), rank 1 killed (SIGKILL, as a
dead node or an out-of-memory kill) at the start of step 15, between the checkpoints 10 and 20. torchrun restarts
both workers; with the same command line they resume from checkpoint-10 by themselves (trainer.resume=auto) and
end with the adapter of the uninterrupted 2-process run."""
from __future__ import annotations

import sys

import pytest

from conftest import run_cli
from llama2ft.core.faults import KILL_AT
from llama2ft.model.run_folder import RunDir
from test_train_e2e import SMOKE, assert_same_adapter

pytestmark = pytest.mark.slow
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "--max-restarts=1"]
COMMON = [*SMOKE, "trainer.max_steps=20", "trainer.save_steps=10", "trainer.eval_steps=1000",
          "trainer.save_total_limit=1"]
ONE_THREAD = {"OMP_NUM_THREADS": "1"}  # two processes on the 2 cores


def test_torchrun_restarts_a_dead_worker_and_the_run_resumes_by_itself(tmp_path):
    straight, run = tmp_path / "straight", RunDir(tmp_path / "run")
    res = run_cli("train", *COMMON, f"hydra.run.dir={straight}", launcher=TORCHRUN, env=ONE_THREAD)
    assert res.returncode == 0, res.stderr[-3000:]

    res = run_cli("train", *COMMON, f"hydra.run.dir={run.path}", launcher=TORCHRUN,
                  env={**ONE_THREAD, KILL_AT: "rank1:step-15"})
    assert res.returncode == 0, res.stderr[-3000:]
    assert "failed (exitcode: -9) local_rank: 1" in res.stderr, res.stderr[-3000:]  # rank 1 died, torchrun saw it
    assert f"resuming from {run.checkpoint(10)}" in res.stdout  # the restarted workers, by themselves
    assert run.read_metrics()["steps_this_run"] == 10 and run.read_state()["state"] == "finished"
    assert run.checkpoint_steps() == [20]
    assert_same_adapter(straight, run.path, atol=1e-6)
