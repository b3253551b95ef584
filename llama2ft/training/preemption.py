"""Preemption: a stop signal ends training cleanly instead of killing it.

SLURM, Kubernetes and torchrun send SIGTERM (SLURM with `--signal`: SIGUSR1) some time before they stop a job.
While `trainer.train` runs, each signal named by `trainer.stop_signals` is caught: the current optimizer step
finishes, the ranks agree at that step's end (one all-reduce of "did any rank get a signal"), so every rank
stops at the same step; the checkpoint of that step is written and completed (training/checkpoints.py),
state.json says `interrupted` with the step, and the process exits with INTERRUPTED_EXIT. The same command
continues from there (`trainer.resume=auto`). More signals while it saves change nothing. Outside
`trainer.train` (data, model loading, the final evaluation and save) signals keep their usual effect: before,
there is nothing to save; after, the last checkpoint stays and a restart does the remaining steps.
"""
from __future__ import annotations

import signal
import sys
import threading
from contextlib import contextmanager
from typing import Any, Iterator, Optional

from llama2ft.core.faults import kill_point, pause_point
from llama2ft.model.run_folder import RunDir
from llama2ft.training import distributed
from llama2ft.training.distributed import say

# EX_TEMPFAIL of sysexits.h ("temporary failure, try again"): stopped by a signal with a complete checkpoint;
# the same command continues. Distinct from 0 (finished), 1 (a crash), 2 (bad input, a full disk), 143 (killed
# by SIGTERM while no handler was installed).
INTERRUPTED_EXIT = 75
UNCATCHABLE = ("SIGKILL", "SIGSTOP")


class Interrupted(SystemExit):
    """Ends the process with INTERRUPTED_EXIT once the interrupted run's checkpoint and state are written."""

    def __init__(self) -> None:
        super().__init__(INTERRUPTED_EXIT)


def signal_problems(names: Any) -> list[str]:
    """What is wrong with `trainer.stop_signals` (names such as SIGTERM, SIGUSR1; [] catches none)."""
    problems = []
    for name in list(names or []):
        if str(name) in UNCATCHABLE or not isinstance(getattr(signal, str(name), None), signal.Signals):
            problems.append(f"trainer.stop_signals: {name!r} is not a signal a process can catch "
                            "(e.g. SIGTERM, SIGUSR1, SIGUSR2, SIGINT)")
    return problems


class Preemption:
    """The stop signals of one run: their handlers while training runs, and the step at which it stopped."""

    def __init__(self, names: Any):
        self.signals = [getattr(signal, str(n)) for n in list(names or [])]
        self.received = 0  # the first signal's number (0: none); set by the handler, read at each step's end
        self.count = 0
        self.stopped_at: Optional[int] = None
        self.signal_name = ""

    def _handle(self, signum: int, frame: Any) -> None:
        # only flags: printing here could re-enter a write to the same stream (progress bars)
        self.received = self.received or signum
        self.count += 1

    @contextmanager
    def installed(self) -> Iterator["Preemption"]:
        """The handlers for the block (signals can only be caught on the main thread); the old ones after."""
        if not self.signals or threading.current_thread() is not threading.main_thread():
            yield self
            return
        before = {s: signal.signal(s, self._handle) for s in self.signals}
        for s in self.signals:
            signal.siginterrupt(s, False)  # a write that a signal interrupts resumes (SA_RESTART)
        try:
            yield self
        finally:
            for s, handler in before.items():
                signal.signal(s, handler)

    def step_ended(self, step: int) -> bool:
        """Whether training stops after `step`: true on every rank as soon as one rank got a signal."""
        agreed = distributed.largest(self.received)
        if agreed and self.stopped_at is None:
            self.stopped_at, self.signal_name = step, signal.Signals(agreed).name
            where = "" if self.received else " (on another rank)"
            say(f"\n{self.signal_name} received{where}: stopping after step {step} with a checkpoint")
        return bool(agreed)

    def end_run(self, run: RunDir, max_steps: int) -> None:
        """After a stop: the run's state says where it stopped, then the process ends with INTERRUPTED_EXIT."""
        step = self.stopped_at
        checkpoint = run.checkpoint(step)
        if distributed.is_main_process():
            run.write_state("interrupted", step=step, max_steps=max_steps, checkpoint=str(checkpoint),
                            signal=self.signal_name)
        if self.count > 1:
            say(f"({self.count} signals received; the ones after the first changed nothing)")
        say(f"interrupted by {self.signal_name} at step {step} of {max_steps}: {checkpoint} is complete; the same "
            f"command with hydra.run.dir={run.path} continues from it (trainer.resume=auto); exit code "
            f"{INTERRUPTED_EXIT}")
        sys.stdout.flush()
        raise Interrupted()

    def callback(self) -> Any:
        """The Trainer callback: fault points at each step's start (tests), the agreed stop at its end."""
        from transformers import TrainerCallback

        owner = self

        class StopOnSignal(TrainerCallback):
            def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
                point = f"step-{state.global_step + 1}"
                kill_point(point)
                pause_point(point)

            def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
                if owner.step_ended(state.global_step):
                    control.should_save = True
                    control.should_training_stop = True
                    control.should_evaluate = False  # the grace period is for the checkpoint

        return StopOnSignal()
