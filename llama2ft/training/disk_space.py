"""A full disk, before and during a save.

Before each checkpoint and before the final save, what the save writes is estimated (the previous complete
checkpoint's size, else the weights it saves plus Adam's two fp32 states per trained parameter) and compared
with the free space of the run folder's disk: less than twice that free gives one warning, less than that
stops the run with one error naming the folder, the space needed and the space free. A save that still fails
because the disk filled (ENOSPC; torch's writer only says "iostream error" / "file write failed", so there the
disk's free space decides) ends the run with one error too: the half-written checkpoint is removed, the last
complete one kept, and a final save that failed leaves no adapter/ (or model/) behind, so the same command
continues once there is room.
"""
from __future__ import annotations

import errno
import shutil
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

from llama2ft.core.errors import UserError, first_line
from llama2ft.core.faults import pause_point
from llama2ft.model.run_folder import RunDir
from llama2ft.training import distributed
from llama2ft.training.checkpoints import recorded_bytes

FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
FULL_MESSAGES = ("No space left on device", "Disk quota exceeded")
SMALL_FILES = 4 << 20  # a checkpoint's tokenizer, rng/scheduler states, configs, trainer_state.json


class DiskFull(UserError):
    """Too little room for a save; the message says where, how much is needed and how much is free."""


def mib(n: int) -> str:
    return f"{n / (1 << 20):,.1f} MiB"


def free_bytes(path: Path) -> int:
    """Free space for this user on the disk that holds `path` (or its nearest existing parent)."""
    while not path.exists() and path != path.parent:
        path = path.parent
    return shutil.disk_usage(path).free


def save_estimate(model: Any, full: bool) -> tuple[int, int]:
    """(bytes of the final save, bytes of a checkpoint) of `model`: its trained weights (all of them for a full
    fine-tune) in their dtype; a checkpoint adds two fp32 optimizer states per trained parameter."""
    trained = [p for p in model.parameters() if p.requires_grad]
    saved = sum(p.numel() * p.element_size() for p in (model.parameters() if full else trained))
    states = sum(p.numel() for p in trained) * 8
    return saved + SMALL_FILES, saved + states + SMALL_FILES


def is_full_disk(exc: BaseException, path: Path, need: int) -> bool:
    seen: Optional[BaseException] = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in FULL_ERRNOS:
            return True
        if any(m in str(seen) for m in FULL_MESSAGES):
            return True
        seen = seen.__cause__ or seen.__context__
    return isinstance(exc, RuntimeError) and free_bytes(path) < need


class DiskSpace:
    """The disk checks of one run: `before_save` ahead of each save, `guard` around the saving code."""

    def __init__(self, run: RunDir, final_bytes: int, checkpoint_bytes: int):
        self.run, self.final_bytes, self.checkpoint_bytes = run, final_bytes, checkpoint_bytes
        self.warned = False

    def checkpoint_need(self, step: int) -> int:
        previous = [s for s in self.run.checkpoint_steps() if s < step]
        return max(self.checkpoint_bytes, recorded_bytes(self.run.checkpoint(previous[-1])) if previous else 0)

    def before_save(self, what: str, need: int) -> None:
        """Stop with DiskFull on every rank when the main process finds less than `need` free; warn below 2x."""
        free = free_bytes(self.run.path)
        short = distributed.largest(int(distributed.is_main_process() and free < need))
        if short:
            raise DiskFull(f"not enough disk space for {what} in {self.run.path}: it needs about {mib(need)}, "
                           f"{mib(free)} free. {self._kept()}")
        if free < 2 * need and not self.warned and distributed.is_main_process():
            self.warned = True
            print(f"warning: the disk of {self.run.path} is nearly full: {mib(free)} free, {what} takes about "
                  f"{mib(need)}", file=sys.stderr, flush=True)
        pause_point(f"save-{Path(what).name}")

    def _kept(self) -> str:
        complete = [s for s in self.run.checkpoint_steps() if self.run.recorded(s)]
        kept = f"The last complete checkpoint, {self.run.checkpoint(complete[-1])}, is kept; " if complete else ""
        return kept + "free some space (or set hydra.run.dir on another disk), then run the same command again"

    @contextmanager
    def guard(self, what: str, need: int, undo: Optional[Callable[[], None]] = None) -> Iterator[None]:
        """A save inside the block that fails on a full disk ends the run with DiskFull, not a traceback;
        what it half-wrote is removed first (`undo`; incomplete checkpoints always)."""
        try:
            yield
        except DiskFull:
            print(file=sys.stderr, flush=True)  # the error on a line of its own, not after the progress bar
            raise
        except Exception as exc:
            if not is_full_disk(exc, self.run.path, need):
                raise
            print(file=sys.stderr, flush=True)
            if distributed.is_main_process():
                for step in self.run.checkpoint_steps():
                    if not self.run.recorded(step):
                        shutil.rmtree(self.run.checkpoint(step), ignore_errors=True)
                if undo is not None:
                    undo()
            raise DiskFull(f"the disk of {self.run.path} is full: {what} failed ({first_line(exc)}); its "
                           f"half-written files are removed. {self._kept()}") from None

    def callback(self) -> Any:
        """The Trainer callback: before each checkpoint save (after the stop callback has had its say)."""
        from transformers import TrainerCallback

        owner = self

        class CheckDiskSpace(TrainerCallback):
            def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
                if control.should_save:
                    step = state.global_step
                    owner.before_save(str(owner.run.checkpoint(step)), owner.checkpoint_need(step))

        return CheckDiskSpace()


def undo_final_save(run: RunDir) -> None:
    """Remove what a failed final save published, so the folder is again an unfinished run (never metrics.json:
    it is written last, and atomically)."""
    for name in (RunDir.ADAPTER, RunDir.MODEL, RunDir.TOKENIZER, RunDir.LOSS_PLOT):
        path = run / name
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
