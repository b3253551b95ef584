"""Test helpers for llama2ft/core/faults.py: hold a process at a named point, send it a real signal there,
let it go on."""
from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Optional

from llama2ft import PROJECT_ROOT
from llama2ft.core.faults import KILL_AT, PAUSE_AT, PAUSE_DIR


def pause_env(folder: Path, *points: str, kill: str = "") -> dict[str, str]:
    folder.mkdir(parents=True, exist_ok=True)
    env = {PAUSE_AT: ",".join(points), PAUSE_DIR: str(folder)}
    return {**env, KILL_AT: kill} if kill else env


def wait_paused(folder: Path, point: str, proc: Optional[subprocess.Popen] = None, timeout: float = 300) -> int:
    """The pid of the process held at `point` (fails when `proc` ends first)."""
    paused = folder / f"{point}.paused"
    deadline = time.time() + timeout
    while not paused.exists():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"exited with {proc.returncode} before {point}:\n{output(proc)[-4000:]}")
        assert time.time() < deadline, f"never reached {point}"
        time.sleep(0.01)
    return int(paused.read_text())


def release(folder: Path, point: str) -> None:
    (folder / f"{point}.go").touch()


def signal_when_paused(folder: Path, point: str, sig: int) -> threading.Thread:
    """In a thread: once a process (this one, say) is held at `point`, send it `sig` and let it go on."""
    def send() -> None:
        os.kill(wait_paused(folder, point), sig)
        time.sleep(0.1)  # the handler runs on the main thread's next bytecode
        release(folder, point)

    thread = threading.Thread(target=send, daemon=True)
    thread.start()
    return thread


def popen(args: list[str], env: dict[str, str], log: Path, launcher: Optional[list[str]] = None) -> subprocess.Popen:
    """`python -m <args>` (or under `launcher`) in a process of its own, one torch thread per process, its
    stdout and stderr into the files `log`.out and `log`.err (a pipe nobody reads would fill and block it)."""
    full = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", **env}
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(f"{log}.out", "w") as out, open(f"{log}.err", "w") as err:
        proc = subprocess.Popen([*(launcher or [sys.executable]), "-m", *args], cwd=PROJECT_ROOT, env=full,
                                stdout=out, stderr=err, text=True)
    proc.log = log  # type: ignore[attr-defined]
    return proc


def finished(proc: subprocess.Popen, timeout: float = 300) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of a process started by `popen`, once it has ended."""
    code = proc.wait(timeout=timeout)
    return code, Path(f"{proc.log}.out").read_text(), Path(f"{proc.log}.err").read_text()  # type: ignore[attr-defined]


def output(proc: subprocess.Popen) -> str:
    return "".join(Path(f"{proc.log}.{kind}").read_text() for kind in ("out", "err"))  # type: ignore[attr-defined]
