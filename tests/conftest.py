"""Shared fixtures: composed configs with tiny CPU settings, the embedded tokenizer, and a runner
for the console scripts that keeps every cache inside the test's temp folder."""
from __future__ import annotations

import gc
import os
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Under pytest-xdist (`-n 2`: a worker per core) every process torch starts gets one thread: two threads per
# worker on 2 cores wait on each other (4.7 s -> 81 s for 40 steps, measured when another job shared the cores).
WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT") or 1)
if WORKERS > 1:
    os.environ["OMP_NUM_THREADS"] = "1"

import pytest  # noqa: E402

import llama2ft  # noqa: E402
from llama2ft import CONFIG_DIR, PROJECT_ROOT  # noqa: E402

SHARED_DATA = PROJECT_ROOT.parent / "shared" / "data"


def offline_env(basetemp: Path) -> dict[str, str]:
    """The environment every test runs in: no network, every cache inside the session's temp folder."""
    cache = basetemp / "hf-cache"
    return {"HF_HOME": str(cache), "HF_DATASETS_CACHE": str(cache / "datasets"), "HF_HUB_OFFLINE": "1",
            "LLAMA2FT_CACHE_DIR": str(basetemp / "llama2ft-cache"), "WANDB_MODE": "offline",
            "GRADIO_ANALYTICS_ENABLED": "False",
            # inductor's kernel cache is not keyed by the CPU capability (ATEN_CPU_CAPABILITY): keep it per session
            "TORCHINDUCTOR_CACHE_DIR": str(basetemp / "inductor")}


@pytest.fixture(autouse=True)
def _offline_env(tmp_path_factory, monkeypatch):
    for key, value in offline_env(tmp_path_factory.getbasetemp()).items():
        monkeypatch.setenv(key, value)


_MODULES_AT_FREEZE = [0]


@pytest.fixture(autouse=True)
def _imports_out_of_gc() -> None:
    """Every full garbage collection walks every object: after torch, transformers, peft and gradio are imported
    that is over 600k objects, ~0.3 s a walk (the Trainer runs one per training, Python more as the heap grows:
    ~10% of the CPU of tests that train in this process). Once a test has imported a batch of new modules, what
    is alive is moved to gc's permanent generation, which later collections skip (gc.freeze; collected first, so
    no garbage is kept). Measured on 168 tests: 8.5 s of full collections became 2.1 s."""
    if len(sys.modules) > _MODULES_AT_FREEZE[0] + 100:
        gc.collect()
        gc.freeze()
        _MODULES_AT_FREEZE[0] = len(sys.modules)


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
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": str(APP_THREADS), **(env or {})}
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
    """`env` set in os.environ for the block (a None value unsets the variable); afterwards the whole
    environment is as before, also what the command itself set (WANDB_*, TRANSFORMERS_VERBOSITY, ...)."""
    saved = dict(os.environ)
    try:
        for key, value in (env or {}).items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def _loggers() -> list:
    import logging

    return [logging.getLogger(), *(lg for lg in logging.Logger.manager.loggerDict.values()
                                   if isinstance(lg, logging.Logger))]


@contextmanager
def _logging_into(out, err) -> Iterator[None]:
    """Library loggers that write to the real stdout/stderr (transformers keeps the stream it was set up
    with) write into `out`/`err` for the block, as they would in the command's own process; levels,
    handlers and flags a command set (Hydra's job logging, quiet_libraries) are undone afterwards."""
    import logging

    real = {id(sys.stdout): out, id(sys.stderr): err, id(sys.__stdout__): out, id(sys.__stderr__): err}
    saved = [(lg, lg.level, lg.disabled, lg.propagate, list(lg.handlers)) for lg in _loggers()]
    moved = [(h, h.stream) for _, _, _, _, hs in saved for h in hs
             if type(h) is logging.StreamHandler and id(h.stream) in real]
    for handler, stream in moved:
        handler.setStream(real[id(stream)])
    try:
        yield
    finally:
        for handler, stream in moved:
            handler.setStream(stream)
        kept = {lg: (level, disabled, propagate, handlers) for lg, level, disabled, propagate, handlers in saved}
        for lg in _loggers():
            for handler in lg.handlers:
                if lg in kept and handler in kept[lg][3]:
                    continue
                if isinstance(handler, logging.FileHandler):  # Hydra's log file of the run ends with the run
                    handler.close()
                elif getattr(handler, "stream", None) in (out, err):  # made during the call: to the real stream
                    handler.setStream(sys.stdout if handler.stream is out else sys.stderr)
            if lg in kept:  # loggers made during the call keep what their library gave them
                level, lg.disabled, lg.propagate, lg.handlers[:] = kept[lg]
                lg.setLevel(level)


# Torch's threads for the commands run in the test process and for the tests' own tensor work. On a quiet
# machine all cores are fastest (40 tiny_smoke steps: 5.4 s on 2 threads, 7.8 s on 1); when other jobs share the
# 2 cores, 2 threads wait on each other (4.7 s on 1 thread, 81 s on 2): LLAMA2FT_TEST_THREADS=1 there.
APP_THREADS = int(os.environ.get("LLAMA2FT_TEST_THREADS") or max(1, (os.cpu_count() or 1) // WORKERS))


@pytest.fixture
def app_threads() -> Iterator[None]:
    """Torch on APP_THREADS for the test's own tensor work (as run_app gives commands), restored after it
    (on 2 shared cores, test_merge + test_lora_variants took 148 s on 2 threads, 76 s on 1)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(APP_THREADS)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextmanager
def _global_state(threads: int) -> Iterator[None]:
    """The command's torch threads (as OMP_NUM_THREADS gives a process), and what a command may change for its
    whole process, restored after it: the random generators (torch, numpy, random), torch's default dtype
    and thread count, warning filters, transformers' progress bars."""
    import random
    import warnings

    import numpy as np
    import torch

    saved = (torch.get_rng_state(), np.random.get_state(), random.getstate(), torch.get_default_dtype(),
             torch.get_num_threads())
    hf_logging = sys.modules.get("transformers.utils.logging")
    bars = hf_logging.is_progress_bar_enabled() if hf_logging else None
    torch.set_num_threads(threads)
    try:
        with warnings.catch_warnings():
            yield
    finally:
        torch.set_rng_state(saved[0])
        np.random.set_state(saved[1])
        random.setstate(saved[2])
        torch.set_default_dtype(saved[3])
        torch.set_num_threads(saved[4])
        hf_logging = sys.modules.get("transformers.utils.logging")
        if hf_logging is not None:
            (hf_logging.enable_progress_bar if bars is not False else hf_logging.disable_progress_bar)()


def _exit_code(code: object, err) -> int:
    """The exit status `sys.exit(code)` gives a process (a non-int code is printed and means 1)."""
    if code is None or isinstance(code, int):
        return code or 0
    print(code, file=err)
    return 1


def run_app(module: str, *args: str, env: dict | None = None, cwd: Path | None = None) -> AppResult:
    """`llama2ft-<module> args...` run in this process: the command's own console entry (Hydra parses the
    arguments, composes the config, makes its run folder), with its output captured and its exit code
    kept; no interpreter start and no second import of torch/transformers. As in a process of its own, an
    uncaught exception prints its traceback on stderr and exits 1, `env` holds only for the call (its
    OMP_NUM_THREADS sets torch's threads, else APP_THREADS), and what the command changes process-wide
    (environment, loggers, seeds, dtype, threads, cwd) is undone after it. Use `run_cli` where a real
    process is what is tested (kill -9, signals, launchers, servers)."""
    import importlib
    import io
    import traceback
    from contextlib import redirect_stderr, redirect_stdout

    from hydra.core.global_hydra import GlobalHydra

    command = importlib.import_module(f"llama2ft.{module}")
    out, err = io.StringIO(), io.StringIO()
    saved = (sys.argv, os.getcwd())
    GlobalHydra.instance().clear()
    try:
        threads = int((env or {}).get("OMP_NUM_THREADS") or APP_THREADS)
        with _environment(env), _global_state(threads), _logging_into(out, err), redirect_stdout(out), \
                redirect_stderr(err):
            os.chdir(cwd or PROJECT_ROOT)
            sys.argv = [f"llama2ft-{module}", *args]
            try:
                code = _exit_code(command.main(), err)  # a console script does sys.exit(main())
            except SystemExit as exc:
                code = _exit_code(exc.code, err)
            except Exception:  # noqa: BLE001 - an uncaught exception ends a process with its traceback
                traceback.print_exc(file=err)
                code = 1
    finally:
        GlobalHydra.instance().clear()
        sys.argv, cwd_before = saved
        os.chdir(cwd_before)
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


def train_ok(run: Path, *overrides: str, env: dict | None = None) -> str:
    """`llama2ft-train overrides... hydra.run.dir=run` in this process; fails the test unless it finished.
    Returns what it printed."""
    res = run_app("train", *overrides, f"hydra.run.dir={run}", env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    return res.stdout


@pytest.fixture(scope="session")
def learned_run(tmp_path_factory) -> TrainedRun:
    """The default tiny recipe, shortened to 400 steps (0.82 held-out exact match): trained once per
    session and shared by the training, chat, web, API and eval tests."""
    reuse = os.environ.get("LLAMA2FT_TEST_RUN")  # developers: point at a finished default run to skip training
    if reuse:
        return TrainedRun(Path(reuse), "exact match after training (reused run)")
    run = tmp_path_factory.mktemp("learned") / "run"
    # session fixtures are set up before the autouse per-test environment: give theirs explicitly
    # in this process on one thread: the adapter is bit-identical to run_cli's (2 threads) and the metrics equal
    # (checked: 82% exact match either way); under load it took 120 s instead of 702 s on 2 threads
    stdout = train_ok(run, "trainer.max_steps=400", "trainer.eval_steps=200", "trainer.save_steps=400",
                      env=offline_env(tmp_path_factory.getbasetemp()))
    return TrainedRun(run, stdout)


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory) -> TrainedRun:
    """`experiment=tiny_smoke` (10 steps of the embedded tiny model, eval at the end), trained once per
    session: for tests that need some finished run to merge, reproduce or load. Read it, never write into it."""
    run = tmp_path_factory.mktemp("smoke") / "run"
    return TrainedRun(run, train_ok(run, "experiment=tiny_smoke", env=offline_env(tmp_path_factory.getbasetemp())))


# A run that the kill, stop and resume tests interrupt and resume (each checkpoint replaces the last once complete)
INTERRUPTIBLE = ["experiment=tiny_smoke", "trainer.max_steps=30", "trainer.save_steps=10", "trainer.eval_steps=1000",
                 "trainer.save_total_limit=1"]


@pytest.fixture(scope="session")
def straight_run(tmp_path_factory) -> Path:
    """INTERRUPTIBLE run without interruption, trained once per session: what a resumed run must end with."""
    run = tmp_path_factory.mktemp("straight") / "run"
    train_ok(run, *INTERRUPTIBLE, env=offline_env(tmp_path_factory.getbasetemp()))
    return run


# Two processes of data parallelism (gloo on CPU) under the shipped DDP config, one thread each on the 2 cores
TWO_PROCESSES = ["experiment=tiny_smoke", "trainer.max_steps=20", "trainer.save_steps=10", "trainer.eval_steps=1000",
                 "trainer.save_total_limit=1"]


@pytest.fixture(scope="session")
def two_process_run(tmp_path_factory) -> TrainedRun:
    """`accelerate launch --config_file configs/accelerate/ddp.yaml -m llama2ft.train TWO_PROCESSES` in a folder
    of its own (no hydra.run.dir: the ranks must agree on one), trained once per session: the accelerate test
    reads it, and the torchrun restart tests resume to its adapter (torchrun's uninterrupted run is the same to
    the bit, checked)."""
    cwd = tmp_path_factory.mktemp("ddp")
    accelerate = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
                  str(PROJECT_ROOT / "configs" / "accelerate" / "ddp.yaml")]
    res = run_cli("train", *TWO_PROCESSES, cwd=cwd, launcher=accelerate,
                  env={**offline_env(tmp_path_factory.getbasetemp()), "OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stderr[-3000:]
    runs = list((cwd / "outputs" / "train").iterdir())
    assert len(runs) == 1, runs  # both ranks agreed on one folder
    return TrainedRun(runs[0], res.stdout)


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


__all__ = ["compose", "run_cli", "run_app", "train_ok", "offline_env", "shared_file", "free_port", "start_app",
           "AppResult", "TrainedRun", "SHARED_DATA", "INTERRUPTIBLE", "llama2ft"]
