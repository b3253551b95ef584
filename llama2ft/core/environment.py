"""What a run ran on, for its provenance.json (training/provenance.py): package versions (python, torch with
its CUDA and cuDNN builds, the libraries of llama2ft's dependency list), the git commit of the llama2ft
checkout, the hardware (CPU model and ISA, GPUs, world size), and how two such records differ.

No record names the host or the user: text that may hold a path goes through `anonymous` (the home
folder becomes `~`, the user and host names `<user>` and `<host>`)."""
from __future__ import annotations

import functools
import getpass
import importlib.metadata as metadata
import os
import platform
import re
import socket
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Optional

from llama2ft import PROJECT_ROOT

# always recorded (a version, or null when not installed); other dependencies only when the run imported them
CORE_PACKAGES = ("torch", "transformers", "peft", "accelerate", "datasets", "bitsandbytes")
TORCH_BUILDS = ("torch_cuda", "torch_cudnn")  # the CUDA and cuDNN torch was built with (null: a CPU build)
HARDWARE_KEYS = ("cpu", "cpu_capability", "gpus", "world_size")  # what a difference is reported for
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def normalized(name: str) -> str:
    """A distribution name as package indexes compare them (PEP 503)."""
    return re.sub(r"[-_.]+", "-", name).lower()


@functools.lru_cache(maxsize=None)  # what a process imported cannot change version under it
def installed_version(name: str) -> Optional[str]:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


@functools.lru_cache(maxsize=None)
def dependency_names() -> tuple[str, ...]:
    """The distributions llama2ft depends on, its extras' too (from its installed metadata; from
    pyproject.toml in a source tree that is not installed)."""
    try:
        requires = metadata.requires("llama2ft") or []
    except metadata.PackageNotFoundError:
        requires = _pyproject_requirements()
    names = (_NAME.match(req.strip()) for req in requires)
    return tuple(sorted({normalized(m.group(0)) for m in names if m}))


def _pyproject_requirements() -> list[str]:
    try:
        import tomllib
    except ImportError:  # python 3.10
        return []
    path = PROJECT_ROOT / "pyproject.toml"
    if not path.is_file():
        return []
    project = tomllib.loads(path.read_text(encoding="utf-8")).get("project", {})
    return [*project.get("dependencies", []), *(r for extra in project.get("optional-dependencies", {}).values()
                                                for r in extra)]


def imported_distributions(names: Iterable[str]) -> set[str]:
    """Those of the distributions `names` with a top-level module imported in this process."""
    loaded = {name.split(".")[0] for name in list(sys.modules)}
    return {name for name in names if loaded.intersection(top_modules(name))}


@functools.lru_cache(maxsize=None)
def top_modules(name: str) -> tuple[str, ...]:
    """The top-level modules distribution `name` installs: its top_level.txt, else the top folders and
    modules of its RECORD and the module named like it."""
    try:
        dist = metadata.distribution(name)
    except metadata.PackageNotFoundError:
        return ()
    listed = dist.read_text("top_level.txt")
    if listed:
        return tuple(line.split("/")[0] for line in listed.split())
    # RECORD lines are `path,hash,size`; parsed as text (dist.files builds a path object per file: slow)
    parts = {line.split(",", 1)[0].split("/", 1)[0] for line in (dist.read_text("RECORD") or "").splitlines()}
    names = {p.removesuffix(".py") for p in parts} | {name.replace("-", "_")}
    return tuple(sorted(n for n in names if n.isidentifier()))  # not *.dist-info, *.data, README.md, ...


def packages(include: Iterable[str] = ()) -> dict[str, Optional[str]]:
    """Versions: python, llama2ft, the core packages and torch's builds, the dependencies this process
    imported, and the names in `include` (null: not installed)."""
    import torch

    imported = imported_distributions(dependency_names())
    out: dict[str, Optional[str]] = {"python": platform.python_version(), "llama2ft": installed_version("llama2ft")}
    for name in CORE_PACKAGES:
        out[name] = installed_version(name)
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    out.update(torch_cuda=torch.version.cuda, torch_cudnn=str(cudnn) if cudnn else None)
    for name in dependency_names():
        if name in imported and name not in out:
            out[name] = installed_version(name)
    for name in include:
        if name not in out:
            out[name] = installed_version(name)
    return out


@functools.lru_cache(maxsize=None)  # the code a process runs is what it loaded: read once per process
def git_state(root: Path) -> dict[str, Any]:
    return read_git_state(root)


def read_git_state(root: Path) -> dict[str, Any]:
    """The commit of the checkout at `root` and whether it has uncommitted changes; `note` says why
    they are null (git not installed, `root` not a checkout)."""
    def git(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=30)

    try:
        head = git("rev-parse", "--show-toplevel", "HEAD")
        lines = head.stdout.split()
        if head.returncode != 0 or not lines or Path(lines[0]).resolve() != Path(root).resolve():
            return {"commit": None, "dirty": None, "note": f"{anonymous(str(root))} is not a git checkout"}
        status = git("status", "--porcelain")
    except FileNotFoundError:
        return {"commit": None, "dirty": None, "note": "git is not installed"}
    except (OSError, subprocess.SubprocessError) as exc:
        return {"commit": None, "dirty": None, "note": f"git failed: {type(exc).__name__}"}
    if len(lines) < 2 or status.returncode != 0:  # e.g. a checkout without any commit yet
        return {"commit": None, "dirty": None, "note": "git could not say the commit"}
    return {"commit": lines[1], "dirty": bool(status.stdout.strip())}


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def hardware(world_size: int) -> dict[str, Any]:
    """CPU model and the ISA torch's kernels use, the GPUs this process sees (name, memory), world size."""
    import torch

    gpus = []
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(i)
            gpus.append({"name": props.name, "memory_gib": round(props.total_memory / 2**30, 1)})
    return {"cpu": cpu_model(), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "machine": platform.machine(), "cpu_count": _cpu_count(), "gpus": gpus, "world_size": world_size}


def _cpu_count() -> Optional[int]:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return None


def anonymous(text: str) -> str:
    """`text` with the home folder as `~` and the user and host names left out."""
    home = str(Path.home())
    if len(home) > 1:
        text = re.sub(re.escape(home) + r"(?![\w.-])", "~", text)
    for name, mark in ((_user(), "<user>"), (socket.gethostname(), "<host>"),
                       (socket.gethostname().split(".")[0], "<host>")):
        if name and len(name) >= 2:
            text = re.sub(rf"(?<![A-Za-z0-9_]){re.escape(name)}(?![A-Za-z0-9_])", mark, text)
    return text


def _user() -> Optional[str]:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no login name and no passwd entry (some containers)
        return None


def differences(recorded: dict, current: dict) -> list[tuple[str, str, str]]:
    """(what, recorded value, current value) for each package version, commit and hardware fact that
    differs between two records ({packages, git, hardware}); packages only one of them lists are left out
    (a record lists the libraries its run imported)."""
    out = []
    old_pk, new_pk = recorded.get("packages") or {}, current.get("packages") or {}
    for name in old_pk:
        if name in new_pk and old_pk[name] != new_pk[name]:
            out.append((name, _show(old_pk[name]), _show(new_pk[name])))
    old_git, new_git = recorded.get("git") or {}, current.get("git") or {}
    if old_git.get("commit") != new_git.get("commit"):
        out.append(("llama2ft commit", _show(old_git.get("commit")), _show(new_git.get("commit"))))
    elif old_git.get("dirty") != new_git.get("dirty"):
        out.append(("llama2ft checkout", _checkout(old_git.get("dirty")), _checkout(new_git.get("dirty"))))
    old_hw, new_hw = recorded.get("hardware") or {}, current.get("hardware") or {}
    for key in HARDWARE_KEYS:
        if key in old_hw and key in new_hw and old_hw[key] != new_hw[key]:
            show = show_gpus if key == "gpus" else _show
            out.append((key.replace("_", " "), show(old_hw[key]), show(new_hw[key])))
    return out


def show_gpus(gpus: Optional[list]) -> str:
    if not gpus:
        return "none"
    names = [f"{g['name']} ({g['memory_gib']} GiB)" for g in gpus]
    return ", ".join(f"{names.count(n)} x {n}" for n in dict.fromkeys(names))


def summary(record: dict) -> str:
    """The environment of a record in one line (sweep summaries, model cards)."""
    pk, git, hw = record.get("packages") or {}, record.get("git") or {}, record.get("hardware") or {}
    builds = ", ".join(f"{k.split('_')[1]} {pk[k]}" for k in TORCH_BUILDS if pk.get(k)) or "CPU build"
    names = [n for n in pk if n not in ("python", "torch", *TORCH_BUILDS)]
    parts = [f"python {_show(pk.get('python'))}", f"torch {_show(pk.get('torch'))} ({builds})",
             *(f"{n} {_show(pk[n])}" for n in names)]
    commit = git.get("commit")
    code = f"llama2ft commit {commit[:12]}{' with uncommitted changes' if git.get('dirty') else ''}" if commit \
        else f"llama2ft commit unknown ({git.get('note', 'not recorded')})"
    machine = (f"CPU {hw.get('cpu', '?')} ({hw.get('cpu_capability', '?')}), GPUs: {show_gpus(hw.get('gpus'))}, "
               f"world size {hw.get('world_size', '?')}")
    return f"{', '.join(parts)}; {code}; {machine}"


def _show(value: Any) -> str:
    return "none" if value is None else str(value)


def _checkout(dirty: Optional[bool]) -> str:
    return "unknown" if dirty is None else ("uncommitted changes" if dirty else "clean")
