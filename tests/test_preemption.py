"""Preemption and resume: a real SIGTERM to a real training process (between two checkpoints, at a checkpoint
step, a second one while it saves), trainer.resume=auto continuing by itself, checkpoints that count only when
complete (a half-written newest one skipped), and rotation that waits for the new checkpoint."""
from __future__ import annotations

import shutil
import signal
from pathlib import Path

import pytest

from conftest import INTERRUPTIBLE, run_app, train_ok
from fault_points import finished, pause_env, popen, release, signal_when_paused, wait_paused
from llama2ft.model.run_folder import RunDir
from llama2ft.training.checkpoints import problem, rotate
from llama2ft.training.preemption import INTERRUPTED_EXIT
from test_train_e2e import SMOKE, assert_same_adapter

# save_total_limit=1: each new checkpoint replaces the last one, only once it is complete
COMMON = INTERRUPTIBLE
RECORD = RunDir.CHECKPOINT_COMPLETE


@pytest.mark.slow
def test_sigterm_stops_with_a_checkpoint_and_the_same_command_finishes_the_same_run(request, tmp_path):
    run, pauses = RunDir(tmp_path / "run"), tmp_path / "pauses"

    # 1. a process of its own gets SIGTERM during step 15 (between the checkpoints 10 and 20)
    proc = popen(["llama2ft.train", *COMMON, f"hydra.run.dir={run.path}"], pause_env(pauses, "step-15", "record-15"),
                 tmp_path / "first")
    straight = request.getfixturevalue("straight_run")  # trained here (if not yet) while that process starts
    pid = wait_paused(pauses, "step-15", proc)
    proc.send_signal(signal.SIGTERM)
    release(pauses, "step-15")
    wait_paused(pauses, "record-15", proc)
    # checkpoint-15 is written but not yet complete: rotation has not touched checkpoint-10
    assert (run.checkpoint(15) / "adapter_model.safetensors").is_file() and not (run.checkpoint(15) / RECORD).exists()
    assert (run.checkpoint(10) / RECORD).is_file()
    proc.send_signal(signal.SIGTERM)  # a second signal while it saves changes nothing
    release(pauses, "record-15")
    code, out, err = finished(proc)
    assert code == INTERRUPTED_EXIT, err[-3000:]
    assert pid == proc.pid and "SIGTERM received: stopping after step 15 with a checkpoint" in out
    assert f"interrupted by SIGTERM at step 15 of 30: {run.checkpoint(15)} is complete" in out
    assert f"hydra.run.dir={run.path}" in out and "Traceback" not in err
    assert run.read_state()["state"] == "interrupted" and run.read_state()["step"] == 15
    assert run.checkpoint_steps() == [15] and problem(run.checkpoint(15)) is None
    assert not run.adapter.exists() and not run.metrics.exists()

    # 2. the same command, in this process: resumes by itself (resume=auto); SIGTERM during step 20, a
    #    checkpoint step, stops there with the one checkpoint of that step
    sender = signal_when_paused(pauses, "step-20", signal.SIGTERM)
    res = run_app("train", *COMMON, f"hydra.run.dir={run.path}", env=pause_env(pauses, "step-20"))
    sender.join()
    assert res.returncode == INTERRUPTED_EXIT, res.stderr[-3000:]
    assert f"resuming from {run.checkpoint(15)}" in res.stdout
    assert run.checkpoint_steps() == [20] and run.read_state()["step"] == 20

    # 3. the same command again finishes: the adapter of the uninterrupted run
    out = train_ok(run.path, *COMMON)
    assert f"resuming from {run.checkpoint(20)}" in out
    assert run.read_metrics()["steps_this_run"] == 10 and run.read_state()["state"] == "finished"
    assert_same_adapter(straight, run.path, atol=1e-6)
    # log.jsonl went on through both stops: each logged step once, as in the uninterrupted run
    logged = [[(e["step"], round(e["loss"], 4)) for e in RunDir(p).read_log() if "loss" in e]
              for p in (run.path, straight)]
    assert logged[0] == logged[1] and [s for s, _ in logged[0]] == [5, 10, 15, 20, 25, 30]


def cut(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def unfinished_copy(smoke: Path, dest: Path) -> RunDir:
    """The smoke run as if it had stopped after its checkpoint-10: config, data files, base model, checkpoint."""
    shutil.copytree(smoke, dest, ignore=shutil.ignore_patterns("adapter", "tokenizer", "metrics.json", "loss.png",
                                                               "state.json"))
    return RunDir(dest)


@pytest.mark.slow
def test_a_half_written_newest_checkpoint_is_skipped_with_one_warning(smoke_run, tmp_path):
    """Seen before: `resuming from .../checkpoint-20`, then SafetensorError (invalid header length)."""
    run = unfinished_copy(smoke_run.path, tmp_path / "run")
    half = run.checkpoint(20)  # as a process killed while saving leaves it
    shutil.copytree(run.checkpoint(10), half)
    (half / RECORD).unlink()
    (half / "trainer_state.json").unlink()
    cut(half / "adapter_model.safetensors")
    res = run_app("train", *SMOKE, "trainer.max_steps=20", f"hydra.run.dir={run.path}")  # resume=auto
    assert res.returncode == 0, res.stderr[-3000:]
    warnings = [line for line in res.stderr.splitlines() if line.startswith("warning: skipping")]
    assert warnings == [f"warning: skipping the incomplete checkpoint {half} (no completion record: it was never "
                        "finished); removed"]
    assert f"resuming from {run.checkpoint(10)}" in res.stdout and "Traceback" not in res.stderr
    assert run.read_metrics()["steps_this_run"] == 10


@pytest.mark.slow
def test_completion_records_catch_changed_files_and_older_checkpoints_count_when_whole(smoke_run, tmp_path):
    ckpt = tmp_path / "checkpoint-10"
    shutil.copytree(smoke_run.path / "checkpoints" / "checkpoint-10", ckpt)
    assert problem(ckpt) is None
    optimizer = ckpt / "optimizer.pt"
    original = optimizer.read_bytes()
    optimizer.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))  # same size, one bit flipped
    assert problem(ckpt) == "optimizer.pt changed since it was saved (sha256)"
    cut(optimizer)
    assert problem(ckpt) == f"optimizer.pt has {len(original) // 2} bytes, {len(original)} when it was saved"
    optimizer.write_bytes(original)

    # a checkpoint from before completion records: counted when its files are whole (only in a folder where
    # no checkpoint has a record)
    (ckpt / RECORD).unlink()
    assert problem(ckpt) == "no completion record: it was never finished"
    assert problem(ckpt, unrecorded_ok=True) is None
    cut(ckpt / "optimizer.pt")
    assert problem(ckpt, unrecorded_ok=True) == "optimizer.pt is cut short"
    optimizer.write_bytes(original)
    cut(ckpt / "adapter_model.safetensors", 0.999)
    assert problem(ckpt, unrecorded_ok=True) == "adapter_model.safetensors is cut short"
    (ckpt / "trainer_state.json").unlink()
    assert problem(ckpt, unrecorded_ok=True) == "no trainer_state.json: it was never finished"


def test_rotation_keeps_the_newest_complete_checkpoints(tmp_path):
    def folder(limit):
        run = RunDir(tmp_path / str(limit))
        for step in (10, 20, 30, 40):
            run.checkpoint(step).mkdir(parents=True)
            if step != 30:  # 30: incomplete
                (run.checkpoint(step) / RECORD).write_text("{}")
        rotate(run, 40, limit)
        return run.checkpoint_steps()

    assert folder(None) == [10, 20, 40]  # all complete ones stay; the incomplete older one goes
    assert folder(2) == [20, 40]
    assert folder(1) == [40]


def test_resume_and_stop_signals_are_checked_with_the_rest_of_the_config(tmp_path):
    res = run_app("train", *SMOKE, "trainer.resume=maybe", "trainer.stop_signals=[SIGTERM,SIGKILL,SIGFOO]",
                  "trainer.save_total_limit=0", f"hydra.run.dir={tmp_path}/run")
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert "invalid config (4 problems)" in res.stderr
    for text in ("trainer.resume='maybe': must be one of auto, true, false", "'SIGKILL' is not a signal",
                 "'SIGFOO' is not a signal", "trainer.save_total_limit=0: must be >= 1"):
        assert text in res.stderr
    assert not (tmp_path / "run" / "base_model").exists()


@pytest.mark.slow
def test_resume_false_refuses_a_folder_with_checkpoints(smoke_run, tmp_path):
    run = unfinished_copy(smoke_run.path, tmp_path / "run")
    res = run_app("train", *SMOKE, "trainer.resume=false", f"hydra.run.dir={run.path}")
    assert res.returncode == 2 and "set trainer.resume=auto (the default) or true" in res.stderr
    assert run.checkpoint_steps() == [10] and problem(run.checkpoint(10)) is None


@pytest.mark.slow
def test_a_sweep_stopped_by_sigterm_says_so_and_the_same_command_resumes_it(tmp_path):
    """SIGTERM in the first job of a sweep: that job stops with its checkpoint, the sweep ends with exit code 75
    and its summary marks the job interrupted; the same sweep command resumes it and runs the rest."""
    from test_sweep import summary

    sweep_dir, pauses = tmp_path / "sweep", tmp_path / "pauses"
    args = ["-m", *SMOKE, "trainer.max_steps=6", "trainer.save_steps=3", "trainer.eval_steps=1000", "lora=r8,r16",
            f"hydra.sweep.dir={sweep_dir}"]
    sender = signal_when_paused(pauses, "step-5", signal.SIGTERM)  # between the checkpoints 3 and 6
    res = run_app("train", *args, env=pause_env(pauses, "step-5"))
    sender.join()
    assert res.returncode == INTERRUPTED_EXIT, res.stderr[-3000:]
    assert [r["status"] for r in summary(sweep_dir)] == ["interrupted at step 5"]
    assert not (sweep_dir / "1").exists()

    res = run_app("train", *args)
    assert res.returncode == 0, res.stderr[-3000:]
    assert f"resuming from {RunDir(sweep_dir / '0').checkpoint(5)}" in res.stdout
    assert [r["status"] for r in summary(sweep_dir)] == ["completed", "completed"]
