"""Output that is never half-written: every folder or file a command publishes is built under a hidden
temporary name beside its destination and renamed into place only once it is complete. Also the one
test of whether a model name means a local folder or a hub id."""
from __future__ import annotations

import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Literal

from llama2ft.core.errors import UserError
from llama2ft.core.faults import KILL_AT, kill_point  # noqa: F401 - tests prove a write killed there leaves nothing

Exists = Literal["error", "replace", "keep"]


def temp_path(final: Path) -> Path:
    """This process's hidden work path next to `final` (the pid lets a later run spot a killed one)."""
    return final.parent / f".{final.name}.tmp-{os.getpid()}"


def clean_stale(final: Path) -> None:
    """Remove temp paths of earlier writes to `final` whose process is gone (killed runs)."""
    for old in final.parent.glob(f".{final.name}.tmp-*"):
        pid = old.name.rsplit("-", 1)[-1]
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            _remove(old)


def publish(tmp: Path, final: Path, exists: Exists = "error") -> None:
    """Move the finished `tmp` to `final`. If `final` exists: "error" raises a UserError, "replace"
    swaps it out only now that the new one is complete, "keep" keeps it and drops `tmp` (another
    process made the same thing first)."""
    if final.exists() or final.is_symlink():
        if exists == "error":
            raise UserError(f"{final} already exists; pass overwrite=true to replace it")
        if exists == "keep":
            _remove(tmp)
            return
        old = final.parent / f".{final.name}.old-{os.getpid()}"
        final.rename(old)
        tmp.rename(final)
        _remove(old)
        return
    try:
        tmp.rename(final)
    except OSError:  # created meanwhile by another process
        if exists != "keep":
            raise
        _remove(tmp)


@contextmanager
def atomic_dir(final: Path, exists: Exists = "error") -> Iterator[Path]:
    """Yield an empty temporary folder; when the block succeeds it becomes `final` (see `publish`),
    when it fails it is removed and `final` is untouched."""
    final.parent.mkdir(parents=True, exist_ok=True)
    clean_stale(final)
    tmp = temp_path(final)
    _remove(tmp)
    tmp.mkdir()
    try:
        yield tmp
        kill_point("before-publish")
        publish(tmp, final, exists)
    finally:
        _remove(tmp)


@contextmanager
def atomic_file(final: Path, exists: Exists = "replace") -> Iterator[Path]:
    """Like `atomic_dir` for one file: write to the yielded path; it replaces `final` at the end."""
    final.parent.mkdir(parents=True, exist_ok=True)
    clean_stale(final)
    tmp = temp_path(final)
    try:
        yield tmp
        if exists == "error" and final.exists():
            raise UserError(f"{final} already exists; pass overwrite=true to replace it")
        tmp.replace(final)
    finally:
        tmp.unlink(missing_ok=True)


def is_local_path(name: str) -> bool:
    """`name` means a folder on this machine: it exists, or it is written as a path (., / or ~)."""
    return name.startswith((".", "/", "~")) or Path(name).expanduser().exists()


def is_hub_id(name: str) -> bool:
    """`name` has the hub's `org/model` shape and is not a local path."""
    return name.count("/") == 1 and not is_local_path(name)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
