"""The locks in lock/ (`make lock`) against pyproject.toml and the venv `make install` made from them: every
requirement of the locked extras is pinned in both locks, the two locks agree but for torch's build, and the
venv holds exactly the pinned versions (required in CI, LLAMA2FT_REQUIRE_LOCKED=1: its venv is a fresh
`make install`; a developer's venv that was not synced from the current lock is skipped)."""
from __future__ import annotations

import hashlib
import importlib.metadata as metadata
import os
import re
import sys
import sysconfig
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from llama2ft import PROJECT_ROOT

tomllib = pytest.importorskip("tomllib")
LOCKS = {name: PROJECT_ROOT / "lock" / f"{name}.txt" for name in ("cpu", "cuda")}
CUDA_ONLY = re.compile(r"^(nvidia-.*|cuda-.*|triton)$")  # what torch's CUDA build brings
# installed by make itself beside the lock: the installer, llama2ft (editable) and the llama.cpp wheel of
# `make llama-cpp` with the one dependency of its own that the lock lacks
BESIDE_THE_LOCK = {"pip", "uv", "llama2ft", "llama-cpp-python", "diskcache"}


def pins(path: Path) -> dict[str, str]:
    """`name==version` lines of a uv/pip-tools requirements file, by canonical name."""
    out = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line and not line[0].isspace() and not line.startswith(("#", "-")):
            name, version = line.split("#")[0].strip().split("==")
            out[canonicalize_name(name)] = version
    return out


def locked_requirements() -> list[Requirement]:
    """pyproject's dependencies and those of the extras the Makefile installs (EXTRAS)."""
    project = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    extras = re.search(r"^EXTRAS \?= (.+)$", (PROJECT_ROOT / "Makefile").read_text(), re.M).group(1).split(",")
    return [Requirement(r) for r in project["dependencies"]] + [
        Requirement(r) for extra in extras for r in project["optional-dependencies"][extra]]


def test_every_requirement_of_the_locked_extras_is_pinned_in_both_locks():
    """Fails when pyproject.toml gains or tightens a requirement and `make lock` was not run."""
    environment = {"python_version": "3.11", "python_full_version": "3.11.0", "sys_platform": "linux",
                   "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix",
                   "implementation_name": "cpython", "platform_python_implementation": "CPython", "extra": ""}
    for name, path in LOCKS.items():
        locked = pins(path)
        for req in locked_requirements():
            if req.marker is not None and not req.marker.evaluate(environment):
                continue
            version = locked.get(canonicalize_name(req.name))
            assert version is not None, f"{req.name} is not in {path.name}: run make lock"
            assert req.specifier.contains(Version(version), prereleases=True), \
                f"{path.name} pins {req.name}=={version}, pyproject.toml asks {req}: run make lock"


def test_the_cpu_and_cuda_locks_differ_only_in_torchs_build():
    cpu, cuda = pins(LOCKS["cpu"]), pins(LOCKS["cuda"])
    assert cpu["torch"].endswith("+cpu") and cuda["torch"] == cpu["torch"].removesuffix("+cpu")
    assert not any(CUDA_ONLY.match(name) for name in cpu)
    shared = {n: v for n, v in cuda.items() if not CUDA_ONLY.match(n) and n != "torch"}
    assert shared == {n: v for n, v in cpu.items() if n != "torch"}


def installed() -> dict[str, str]:
    # the venv's own site-packages, not sys.path: a test that imported setuptools earlier in this process put its
    # vendored packages (packaging, platformdirs, more-itertools, older versions) on sys.path
    site = sysconfig.get_paths()["purelib"]
    return {canonicalize_name(d.metadata["Name"]): d.version for d in metadata.distributions(path=[site])}


def test_the_venv_holds_exactly_the_locked_versions():
    """`make install` records the lock it synced (`.venv/.installed`: path and sha256); this venv must hold
    that lock's versions and nothing else but what make installs beside it."""
    record = Path(sys.prefix) / ".installed"
    text = record.read_text().split() if record.is_file() else []
    lock = PROJECT_ROOT / text[0] if len(text) == 2 else None
    synced = lock is not None and lock.is_file() and hashlib.sha256(lock.read_bytes()).hexdigest() == text[1]
    if not synced:
        assert not os.environ.get("LLAMA2FT_REQUIRE_LOCKED"), \
            f"LLAMA2FT_REQUIRE_LOCKED is set but {record} names no current lock ({text}): run make install"
        pytest.skip("this venv was not synced from the current lock by make install")
    have, want = installed(), pins(lock)
    wrong = {n: (v, have.get(n)) for n, v in want.items() if have.get(n) != v}
    assert not wrong, f"pinned in {lock.name} -> installed: {wrong}"
    extra = set(have) - set(want) - BESIDE_THE_LOCK
    assert not extra, f"installed but not in {lock.name}: {sorted(extra)}"
