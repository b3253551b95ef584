"""The commands the studio runs: each a subprocess `python -m llama2ft.<command> ARGS` in the folder the studio
was started from, with its output kept (the tail shown in the page) and its exit code. Stop sends SIGTERM: a
training run finishes its step, writes a checkpoint and exits 75 (training/preemption.py); the servers drain."""
from __future__ import annotations

import codecs
import functools
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from pathlib import Path
from typing import Optional

KEEP_LINES = 2000  # of a job's output (a bar redrawn with \r stays one line)
_AUTH = re.compile(r"^(auth=[^:]*:).+$")
_ESCAPES = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")  # a terminal's cursor moves and colours (tqdm's nested bars)


@functools.lru_cache(maxsize=None)
def script_of(command: str) -> str:
    """The console script of `llama2ft.<command>` (pyproject.toml's [project.scripts], as installed)."""
    from importlib.metadata import entry_points

    found = [e.name for e in entry_points(group="console_scripts") if e.value == f"llama2ft.{command}:main"]
    return found[0] if found else f"llama2ft-{command}"


class Job:
    """One command run as a subprocess, its output read by a thread as it comes."""

    def __init__(self, command: str, args: list[str], cwd: Path, folder: Optional[Path] = None):
        self.command, self.args, self.cwd, self.folder = command, list(args), cwd, folder
        self.lines: deque[str] = deque(maxlen=KEEP_LINES)
        self._partial = ""
        self._lock = threading.Lock()
        self.started = time.time()
        self.ended: Optional[float] = None
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(self.argv, cwd=str(cwd), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, env=env, start_new_session=True)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    @property
    def argv(self) -> list[str]:
        return [sys.executable, "-m", f"llama2ft.{self.command}", *self.args]

    def shown(self) -> str:
        return self.shown_for(self.command, self.args)

    @staticmethod
    def shown_for(command: str, args: list[str]) -> str:
        """The command line as a user types it (the console script runs `python -m llama2ft.<command>`); a
        password (auth=user:password) shown as ***."""
        return shlex.join([script_of(command), *(_AUTH.sub(r"\1***", a) for a in args)])

    def _read(self) -> None:
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        assert self.proc.stdout is not None
        while True:
            chunk = self.proc.stdout.read1(65536)
            if not chunk:
                break
            self._add(decoder.decode(chunk))
        self._add(decoder.decode(b"", final=True) + "\n")
        self.proc.wait()
        self.ended = time.time()

    def _add(self, text: str) -> None:
        with self._lock:
            parts = _ESCAPES.sub("", self._partial + text).replace("\r\n", "\n").split("\n")
            self._partial = parts.pop()
            for line in parts:
                self.lines.append(line.rsplit("\r", 1)[-1])  # what a terminal shows of a line redrawn with \r

    @property
    def running(self) -> bool:
        return self.ended is None

    @property
    def returncode(self) -> Optional[int]:
        return None if self.running else self.proc.returncode

    def stop(self) -> None:
        """SIGTERM (a training run checkpoints and exits 75; a server drains)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def output(self, last: int = 60) -> str:
        with self._lock:
            lines = list(self.lines)[-last:]
            partial = self._partial.rsplit("\r", 1)[-1]
        return "\n".join(lines + ([partial] if partial else [])).rstrip("\n")

    def wait(self, timeout: Optional[float] = None) -> Optional[int]:
        self._reader.join(timeout)
        return self.returncode

    def status(self) -> str:
        if self.running:
            return f"running ({int(time.time() - self.started)} s)"
        return f"exited {self.returncode} after {int((self.ended or 0) - self.started)} s"


class Jobs:
    """The studio's jobs by key (a run folder, or an action on one); a key runs one job at a time."""

    def __init__(self, cwd: Path):
        self.cwd = cwd
        self._jobs: dict[str, Job] = {}
        self._lock = threading.Lock()

    def start(self, key: str, command: str, args: list[str], folder: Optional[Path] = None) -> Job:
        with self._lock:
            old = self._jobs.get(key)
            if old is not None and old.running:
                raise RuntimeError(f"{key}: {old.shown()} is still running")
            job = self._jobs[key] = Job(command, args, self.cwd, folder)
            return job

    def get(self, key: str) -> Optional[Job]:
        return self._jobs.get(key)

    def running(self) -> list[Job]:
        return [j for j in list(self._jobs.values()) if j.running]

    def stop_all(self, wait_s: float = 60.0) -> None:
        """SIGTERM every running job and wait for them (a training run needs a step and a checkpoint)."""
        jobs = self.running()
        for job in jobs:
            job.stop()
        deadline = time.time() + wait_s
        for job in jobs:
            job.wait(max(0.0, deadline - time.time()))
            if job.running:
                job.proc.kill()
