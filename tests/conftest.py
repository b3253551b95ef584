"""Shared fixtures: composed configs with tiny CPU settings, the embedded tokenizer, and a runner
for the console scripts that keeps every cache inside the test's temp folder."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import llama2ft
from llama2ft import CONFIG_DIR, PROJECT_ROOT

SHARED_DATA = PROJECT_ROOT.parent / "shared" / "data"


@pytest.fixture(autouse=True)
def _offline_env(tmp_path_factory, monkeypatch):
    cache = tmp_path_factory.getbasetemp() / "hf-cache"
    monkeypatch.setenv("HF_HOME", str(cache))
    monkeypatch.setenv("HF_DATASETS_CACHE", str(cache / "datasets"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("LLAMA2FT_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "llama2ft-cache"))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("GRADIO_ANALYTICS_ENABLED", "False")
    # inductor's kernel cache is not keyed by the CPU capability (ATEN_CPU_CAPABILITY): keep it per session
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "inductor"))


@contextmanager
def composer(config_name: str = "train", run_dir: str = "/tmp/llama2ft-test") -> Iterator[Callable[[list[str]], Any]]:
    """`compose` for many configs under one Hydra initialisation (initialising is most of a compose's time)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from llama2ft.config.hydra_app import register_schemas
    from llama2ft.training.methods import register_schemas as register_method_schemas

    register_schemas()
    register_method_schemas()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        yield lambda overrides: hydra_compose(config_name=config_name,
                                              overrides=[*overrides, f"hydra.run.dir={run_dir}"],
                                              return_hydra_config=True)


def compose(overrides: list[str] | None = None, config_name: str = "train", run_dir: str = "/tmp/llama2ft-test"):
    """A composed config as the apps see it (hydra:runtime resolvers included)."""
    with composer(config_name, run_dir) as make:
        return make(overrides or [])


@pytest.fixture(scope="session")
def tokenizer():
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(PROJECT_ROOT / "data" / "tokenizer"))
    if tok.pad_token_id is None:
        tok.pad_token = tok.unk_token
    return tok


@pytest.fixture(scope="session")
def real_tokenizer():
    """The real Llama-2 tokenizer (../shared/data/llama2-tokenizer), as llama2ft loads it."""
    from llama2ft.model.loading import open_tokenizer

    path = SHARED_DATA / "llama2-tokenizer"
    if not (path / "tokenizer.json").is_file():
        pytest.skip(f"{path} not present (the real Llama-2 tokenizer lives in ../shared/data beside the checkout)")
    return open_tokenizer(str(path), need_bos_eos=True)


@pytest.fixture(scope="session", params=["embedded", "llama2"])
def any_tokenizer(request, tokenizer):
    """Each test that takes it runs on the embedded tokenizer and on the real Llama-2 one."""
    return tokenizer if request.param == "embedded" else request.getfixturevalue("real_tokenizer")


def run_cli(module: str, *args: str, env: dict | None = None, timeout: int = 600, cwd: Path | None = None,
            launcher: list[str] | None = None) -> subprocess.CompletedProcess:
    """Run `python -m llama2ft.<module> args...` (or under `launcher`) and capture its output."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "2", **(env or {})}
    full_env = {k: v for k, v in full_env.items() if v is not None}  # None unsets a variable
    cmd = [*(launcher or [sys.executable]), "-m", f"llama2ft.{module}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=full_env, timeout=timeout,
                          cwd=str(cwd or PROJECT_ROOT))


@dataclass
class AppResult:
    """What a command run in this process left: its exit code and what it printed (like CompletedProcess)."""

    returncode: int
    stdout: str
    stderr: str


@contextmanager
def _environment(env: dict | None) -> Iterator[None]:
    """`env` set in os.environ for the block (a None value unsets the variable), restored after."""
    saved = {k: os.environ.get(k) for k in env or {}}
    try:
        for key, value in (env or {}).items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def run_app(module: str, *args: str, env: dict | None = None, cwd: Path | None = None) -> AppResult:
    """`llama2ft-<module> args...` run in this process: the command's own console entry (Hydra parses the
    arguments, composes the config, makes its run folder), with its output captured and its exit code
    kept; no interpreter start and no second import of torch/transformers. Use `run_cli` where a real
    process is what is tested (signals, launchers, servers)."""
    import importlib
    import io
    import logging
    from contextlib import redirect_stderr, redirect_stdout

    from hydra.core.global_hydra import GlobalHydra

    command = importlib.import_module(f"llama2ft.{module}")
    out, err = io.StringIO(), io.StringIO()
    root = logging.getLogger()
    saved = (sys.argv, os.getcwd(), list(root.handlers), root.level)
    code = 0
    GlobalHydra.instance().clear()
    try:
        with _environment(env), redirect_stdout(out), redirect_stderr(err):
            os.chdir(cwd or PROJECT_ROOT)
            sys.argv = [f"llama2ft-{module}", *args]
            try:
                command.main()
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        GlobalHydra.instance().clear()
        sys.argv, cwd_before, handlers, level = saved
        os.chdir(cwd_before)
        for handler in root.handlers:  # Hydra's job logging (the run's .log file) ends with the command
            if handler not in handlers:
                handler.close()
        root.handlers[:] = handlers
        root.setLevel(level)
    return AppResult(code, out.getvalue(), err.getvalue())


def shared_file(name: str) -> Path:
    path = SHARED_DATA / name
    if not path.is_file():
        pytest.skip(f"{path} not present (real community samples live in ../shared/data beside the checkout)")
    return path


@dataclass
class TrainedRun:
    path: Path
    stdout: str


@pytest.fixture(scope="session")
def learned_run(tmp_path_factory) -> TrainedRun:
    """The default tiny recipe, shortened to 400 steps (0.82 held-out exact match): trained once per
    session and shared by the training, chat, web, API and eval tests."""
    reuse = os.environ.get("LLAMA2FT_TEST_RUN")  # developers: point at a finished default run to skip training
    if reuse:
        return TrainedRun(Path(reuse), "exact match after training (reused run)")
    run = tmp_path_factory.mktemp("learned") / "run"
    res = run_app("train", "trainer.max_steps=400", "trainer.eval_steps=200", "trainer.save_steps=400",
                  f"hydra.run.dir={run}")
    assert res.returncode == 0, res.stderr[-3000:]
    return TrainedRun(run, res.stdout)


def start_app(module: str, *args: str, ready_path: str = "/") -> tuple[subprocess.Popen, str]:
    """Start `python -m llama2ft.<module> args... port=<free>` and wait until it answers HTTP on
    127.0.0.1; returns the process and its base URL (no trailing slash)."""
    import time

    import httpx

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", f"llama2ft.{module}", *args, f"port={port}"], cwd=str(PROJECT_ROOT),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"})
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while time.time() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"llama2ft.{module} exited: {proc.stderr.read()[-3000:]}")
        try:
            if httpx.get(url + ready_path, timeout=1).status_code < 500:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    proc.kill()
    raise AssertionError(f"llama2ft.{module} did not come up in 120 s")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


__all__ = ["compose", "run_cli", "run_app", "shared_file", "free_port", "start_app", "TrainedRun", "SHARED_DATA", "llama2ft"]
