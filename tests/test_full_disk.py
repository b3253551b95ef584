"""A full disk: a run folder on a small tmpfs (root mounts one; elsewhere the test is skipped) that fills while a
checkpoint is written, while the final adapter is written, and before the final save, then one that is nearly
full (a warning). Each time: one `error:`
line naming the folder, no traceback, exit code 2, the last complete checkpoint kept, no half-written
checkpoint, adapter/ or metrics.json; once there is room again the same command finishes the run."""
from __future__ import annotations

import errno
import os
import subprocess
import threading
from pathlib import Path
from typing import Iterator

import pytest
import torch
from safetensors.torch import load_file

from conftest import run_app
from fault_points import pause_env, release, wait_paused
from llama2ft.model.run_folder import RunDir
from llama2ft.training.checkpoints import problem
from test_train_e2e import SMOKE

pytestmark = pytest.mark.slow
COMMON = [*SMOKE, "trainer.max_steps=4", "trainer.save_steps=2", "trainer.eval_steps=1000",
          "trainer.save_total_limit=1"]
DISK_MB = 40  # the run folder is ~15 MB: base model 5 MB, a checkpoint 7.4 MB, the adapter 2.5 MB


@pytest.fixture
def small_disk(tmp_path) -> Iterator[Path]:
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={DISK_MB}m", "tmpfs", str(disk)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.strip()})")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def fill(disk: Path, leave: int = 0) -> Path:
    """Write a filler file until the disk has `leave` bytes free (0: until a write fails with ENOSPC)."""
    filler = disk / f"filler-{len(list(disk.glob('filler-*')))}"
    with filler.open("wb") as f:
        block = b"\0" * (1 << 16)
        try:
            while os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize - len(block) >= leave:
                f.write(block)
                f.flush()
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
    return filler


def fill_when_paused(pauses: Path, point: str, disk: Path) -> threading.Thread:
    """In a thread: once the run is held at `point` (after the free-space check), fill the disk, let it go on."""
    def go() -> None:
        wait_paused(pauses, point)
        fill(disk)
        release(pauses, point)

    thread = threading.Thread(target=go, daemon=True)
    thread.start()
    return thread


def one_error(res, *texts: str) -> str:
    assert res.returncode == 2, res.stderr[-3000:]
    assert "Traceback" not in res.stderr
    errors = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, res.stderr[-3000:]
    for text in texts:
        assert text in errors[0]
    return errors[0]


def unfinished(run: RunDir, checkpoint: int) -> None:
    """Only complete checkpoints (the one of `checkpoint`) and no final parts; nothing half-written anywhere."""
    assert run.checkpoint_steps() == [checkpoint] and problem(run.checkpoint(checkpoint)) is None
    assert sorted(p.name for p in run.checkpoints.iterdir()) == [f"checkpoint-{checkpoint}"]
    for part in (run.adapter, run.tokenizer, run.metrics, run.loss_plot):
        assert not part.exists(), part
    leftovers = [p.name for p in run.path.iterdir() if "tmp" in p.name or p.name.startswith(".")]
    assert leftovers in ([], [".hydra"]), leftovers


def test_a_full_disk_ends_the_run_with_one_error_and_keeps_the_last_complete_checkpoint(small_disk, tmp_path):
    run, pauses = RunDir(small_disk / "run"), tmp_path / "pauses"
    args = [*COMMON, f"hydra.run.dir={run.path}"]

    # 1. the disk fills while checkpoint-4 is written (torch.save: "file write failed")
    filler = fill_when_paused(pauses, "save-checkpoint-4", small_disk)
    res = run_app("train", *args, env=pause_env(pauses, "save-checkpoint-4"))
    filler.join()
    one_error(res, f"the disk of {run.path} is full: saving a checkpoint failed",
              f"{run.checkpoint(2)}, is kept", "run the same command again")
    unfinished(run, 2)

    # 2. room again; the disk fills while the final adapter is written
    for f in small_disk.glob("filler-*"):
        f.unlink()
    filler = fill_when_paused(pauses, "save-adapter", small_disk)
    res = run_app("train", *args, env=pause_env(pauses, "save-adapter"))
    filler.join()
    assert f"resuming from {run.checkpoint(2)}" in res.stdout
    one_error(res, f"the disk of {run.path} is full: saving {run.adapter} failed", f"{run.checkpoint(4)}, is kept")
    unfinished(run, 4)

    # 3. 1 MiB free: the check before the final save stops it before anything is written
    for f in small_disk.glob("filler-*"):
        f.unlink()
    fill(small_disk, leave=1 << 20)
    res = run_app("train", *args)
    one_error(res, f"not enough disk space for {run.adapter} in {run.path}: it needs about", "MiB free")
    unfinished(run, 4)

    # 4. room for the final save but not twice that: a warning, and the same command finishes the run
    for f in small_disk.glob("filler-*"):
        f.unlink()
    fill(small_disk, leave=9 << 20)  # the final save takes about 6.3 MiB
    res = run_app("train", *args)
    assert res.returncode == 0, res.stderr[-3000:]
    assert f"warning: the disk of {run.path} is nearly full:" in res.stderr
    assert f"resuming from {run.checkpoint(4)}" in res.stdout
    assert run.read_metrics()["steps_this_run"] == 0 and run.read_state()["state"] == "finished"
    # checkpoint-4 is the last step: loaded, not trained one step further (the HF Trainer would do step 5)
    assert "checkpoint-4 is the last step (4): nothing left to train" in res.stdout
    name = "adapter_model.safetensors"
    assert load_file(run.adapter / name).keys() == load_file(run.checkpoint(4) / name).keys()
    assert all(torch.equal(t, load_file(run.checkpoint(4) / name)[k]) for k, t in load_file(run.adapter / name).items())
