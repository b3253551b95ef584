"""Checkpoints that are complete or ignored, the resume point, and their rotation.

The HF Trainer writes checkpoints/checkpoint-<step>/ in place. Once every rank has written its part, the main
process records each file's size and sha256 in the folder's completion record (RunDir.CHECKPOINT_COMPLETE),
written last and atomically, after the files are flushed to disk. A resume takes the newest checkpoint whose
files still match their record and skips (one warning line each) the newer ones that do not: cut short by a
kill, a full disk or a dead node. Rotation (`trainer.save_total_limit`, done here instead of by the Trainer)
runs only once the new checkpoint is complete, so the newest complete checkpoint always survives it.
A run folder whose checkpoints all lack a record was written by an older llama2ft: there a checkpoint counts
when its files are whole (trainer_state.json parses, safetensors files are as long as their headers say,
torch files are whole zip archives).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
import sys
import zipfile
from pathlib import Path
from typing import Any, Optional

from llama2ft.core.faults import kill_point, pause_point
from llama2ft.core.files import atomic_file
from llama2ft.model.run_folder import RunDir
from llama2ft.training import distributed
from llama2ft.training.distributed import say

RESUME_MODES = ("auto", "true", "false")
TRAINER_STATE = "trainer_state.json"  # the HF Trainer's own state, the last file it writes into a checkpoint


def resume_mode(value: Any) -> str:
    """`trainer.resume` as one of RESUME_MODES (true/false from the command line arrive as strings)."""
    mode = str(value).strip().lower()
    if mode not in RESUME_MODES:
        raise ValueError(f"trainer.resume={value!r}: must be one of {', '.join(RESUME_MODES)}")
    return mode


def resume_problems(value: Any) -> list[str]:
    try:
        resume_mode(value)
    except ValueError as exc:
        return [str(exc)]
    return []


def _sha256(path: Path, flush: bool = False) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
        if flush:
            os.fsync(f.fileno())  # on disk before the record says so (a node that dies loses the page cache)
    return digest.hexdigest()


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.name != RunDir.CHECKPOINT_COMPLETE)


def write_record(folder: Path, step: int) -> None:
    """Mark `folder` complete: every file's size and sha256, written last."""
    files = {p.relative_to(folder).as_posix(): {"bytes": p.stat().st_size, "sha256": _sha256(p, flush=True)}
             for p in _files(folder)}
    with atomic_file(folder / RunDir.CHECKPOINT_COMPLETE) as tmp:
        tmp.write_text(json.dumps({"step": step, "files": files}, indent=1) + "\n", encoding="utf-8")


def recorded_bytes(folder: Path) -> int:
    """The size of a complete checkpoint by its record (0 without one)."""
    try:
        record = json.loads((folder / RunDir.CHECKPOINT_COMPLETE).read_text(encoding="utf-8"))
        return sum(int(f["bytes"]) for f in record["files"].values())
    except (OSError, ValueError, KeyError, TypeError):
        return 0


def problem(folder: Path, unrecorded_ok: bool = False) -> Optional[str]:
    """Why `folder` is not a complete checkpoint (None: it is). `unrecorded_ok`: the run predates records."""
    record_file = folder / RunDir.CHECKPOINT_COMPLETE
    if not record_file.is_file():
        return _whole_files_problem(folder) if unrecorded_ok else "no completion record: it was never finished"
    try:
        files = json.loads(record_file.read_text(encoding="utf-8"))["files"]
    except (ValueError, KeyError, TypeError):
        return "its completion record is unreadable"
    for name, saved in files.items():
        path = folder / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != saved["bytes"]:
            return f"{name} has {path.stat().st_size} bytes, {saved['bytes']} when it was saved"
        if _sha256(path) != saved["sha256"]:
            return f"{name} changed since it was saved (sha256)"
    return None


def _whole_files_problem(folder: Path) -> Optional[str]:
    try:
        json.loads((folder / TRAINER_STATE).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return f"no {TRAINER_STATE}: it was never finished"
    except ValueError:
        return f"{TRAINER_STATE} is cut short"
    for path in _files(folder):
        if path.suffix == ".safetensors" and not _whole_safetensors(path):
            return f"{path.name} is cut short"
        if path.suffix in (".pt", ".pth") and not zipfile.is_zipfile(path):
            return f"{path.name} is cut short"
    return None


def _whole_safetensors(path: Path) -> bool:
    """The file is exactly as long as its header says (8 bytes of length, the JSON header, the tensors)."""
    size = path.stat().st_size
    try:
        with path.open("rb") as f:
            (length,) = struct.unpack("<Q", f.read(8))
            if 8 + length > size:
                return False
            header = json.loads(f.read(length))
    except (struct.error, ValueError):
        return False
    end = max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"), default=0)
    return size == 8 + length + end


def resume_point(run: RunDir, mode: str) -> Optional[Path]:
    """The checkpoint a run continues from (None: from the beginning), decided by the main process: the newest
    complete one for resume=auto/true, none for false. Incomplete checkpoints newer than it are removed: this
    run writes those steps again."""
    chosen = None
    if mode != "false" and distributed.is_main_process():
        steps = run.checkpoint_steps()
        unrecorded_ok = not any(run.recorded(s) for s in steps)
        for step in reversed(steps):
            why = problem(run.checkpoint(step), unrecorded_ok)
            if why is None:
                chosen = str(run.checkpoint(step))
                break
            print(f"warning: skipping the incomplete checkpoint {run.checkpoint(step)} ({why}); removed",
                  file=sys.stderr, flush=True)
            shutil.rmtree(run.checkpoint(step), ignore_errors=True)
    chosen = distributed.from_main(chosen)
    if chosen:
        say(f"resuming from {chosen}")
    elif mode == "true":
        say("trainer.resume=true but no complete checkpoint yet: starting from the beginning")
    return Path(chosen) if chosen else None


def train(trainer: Any, resume_from: Optional[Path]) -> dict:
    """`trainer.train`, resumed from `resume_from`; its metrics. A checkpoint of the last step (a run stopped
    during its last step, or a final save that failed) is only loaded: the HF Trainer would train one step past
    max_steps before it checks the step count."""
    if resume_from is not None and trainer.args.max_steps > 0:
        from transformers import TrainerState

        state = TrainerState.load_from_json(str(resume_from / TRAINER_STATE))
        if state.global_step >= trainer.args.max_steps:
            trainer._load_from_checkpoint(str(resume_from))
            trainer.state = state
            say(f"{resume_from.name} is the last step ({state.global_step}): nothing left to train")
            return {}
    return dict(trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None).metrics)


def rotate(run: RunDir, newest: int, limit: Optional[int]) -> None:
    """After checkpoint `newest` is complete: keep the newest `limit` complete checkpoints (all: None), and drop
    the incomplete ones older than it."""
    older = [s for s in run.checkpoint_steps() if s < newest]
    complete = [s for s in older if run.recorded(s)]
    kept = set(complete[len(complete) - (limit - 1):]) if limit is not None and limit > 1 else set()
    for step in older:
        if step not in kept and (limit is not None or step not in complete):
            shutil.rmtree(run.checkpoint(step), ignore_errors=True)


class Checkpoints:
    """Completes each checkpoint the Trainer saves, then rotates (`limit`: trainer.save_total_limit)."""

    def __init__(self, run: RunDir, limit: Optional[int]):
        self.run, self.limit = run, limit

    def saved(self, step: int) -> None:
        distributed.barrier()  # every rank has written its part (its rng state; FSDP/DeepSpeed shards)
        if distributed.is_main_process():
            pause_point(f"record-{step}")
            kill_point(f"record-{step}")
            write_record(self.run.checkpoint(step), step)
            rotate(self.run, step, self.limit)
        distributed.barrier()  # no rank ends (an interrupted run) before the checkpoint is complete

    def callback(self) -> Any:
        from transformers import TrainerCallback

        owner = self

        class CompleteCheckpoints(TrainerCallback):
            def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
                owner.saved(state.global_step)

        return CompleteCheckpoints()
