"""The machine-readable record of training: each Trainer log event (loss, eval_loss, learning_rate and what
the method logs, e.g. rewards/margins) as one line of the run folder's log.jsonl, with its step, the run's
max_steps, epoch and time, written by the main process as it happens. The studio's live curves, its progress
and ETA, and loss.png read it (training/plots.py)."""
from __future__ import annotations

import time
from typing import Any

from llama2ft.model.run_folder import RunDir


def step_log(run: RunDir) -> Any:
    """The Trainer callback that appends to `run`'s log.jsonl. A resumed run first drops what an earlier
    attempt logged after the checkpoint it resumes from (those steps run again), so no step is there twice."""
    from transformers import TrainerCallback

    class StepLog(TrainerCallback):
        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if state.is_world_process_zero:  # the state is the checkpoint's by now (0 on a new start)
                run.trim_log(state.global_step)

        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kwargs: Any) -> None:
            if state.is_world_process_zero and logs:
                run.append_log({"step": state.global_step, "max_steps": state.max_steps, "time": round(time.time(), 3),
                                **{k: _plain(v) for k, v in logs.items()}})

    return StepLog()


def _plain(value: Any) -> Any:
    """A JSON value: numbers as floats/ints (tensors and numpy scalars included), the rest as they are or text."""
    if isinstance(value, (bool, int, float, str)) or value is None:
        return value
    try:
        return float(value)
    except (TypeError, ValueError):
        return str(value)
