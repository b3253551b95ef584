"""Fault points for tests: named places where a process SIGKILLs itself or waits, so that a test can prove what
a crash leaves behind, or send a real signal at a known moment. Nothing happens unless a test sets the
environment variables below.

A point's name in LLAMA2FT_KILL_AT / LLAMA2FT_PAUSE_AT (several: comma-separated) arms it on every rank;
`rank1:step-25` arms it on rank 1 only. Points fire in the first attempt of a run only: the workers that
torchrun restarts (TORCHELASTIC_RESTART_COUNT > 0) run clean, as after a real one-off fault.
"""
from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Optional

KILL_AT = "LLAMA2FT_KILL_AT"
PAUSE_AT = "LLAMA2FT_PAUSE_AT"
# A paused point writes <dir>/<point>.paused (holding its pid) and waits until the test creates <dir>/<point>.go;
# a point that was let go once passes at once afterwards (a stream's later tokens, say).
PAUSE_DIR = "LLAMA2FT_PAUSE_DIR"
PAUSE_LIMIT_S = 300  # a test that never lets go does not hang the process forever


def armed(variable: str, name: str) -> Optional[str]:
    """The spelling under which `name` is armed in `variable` on this rank (None: not armed here)."""
    value = os.environ.get(variable)
    if not value or os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") != "0":
        return None
    wanted = {w.strip() for w in value.split(",")}
    for spelling in (name, f"rank{os.environ.get('RANK', '0')}:{name}"):
        if spelling in wanted:
            return spelling
    return None


def kill_point(name: str) -> None:
    if armed(KILL_AT, name):
        os.kill(os.getpid(), signal.SIGKILL)


def pause_point(name: str) -> None:
    spelling = armed(PAUSE_AT, name)
    if spelling is None:
        return
    folder = Path(os.environ[PAUSE_DIR])
    go = folder / f"{spelling}.go"
    if go.exists():
        return
    paused = folder / f"{spelling}.paused"
    tmp = folder / f".{spelling}.paused.tmp"
    tmp.write_text(str(os.getpid()), encoding="utf-8")
    tmp.replace(paused)  # the test never reads a half-written pid
    deadline = time.monotonic() + PAUSE_LIMIT_S
    while not go.exists() and time.monotonic() < deadline:
        time.sleep(0.01)  # a signal's Python handler runs in between
