"""conftest.run_app: a command run in the test process reports what its own process would (exit code,
stdout, stderr, a traceback), and what it changes process-wide is undone after it."""
from __future__ import annotations

import logging
import os
import sys
import types
import warnings

import pytest
import torch

from conftest import run_app
from llama2ft import PROJECT_ROOT


def fake_command(monkeypatch, main) -> str:
    """`llama2ft.<name>` whose console entry is `main`."""
    module = types.ModuleType("llama2ft._fake_command")
    module.main = main
    monkeypatch.setitem(sys.modules, "llama2ft._fake_command", module)
    return "_fake_command"


def test_exit_codes_and_output_are_a_processes(monkeypatch):
    res = run_app("sweep", "/nope/sweep")  # main() returns 2: a console script exits with it
    assert (res.returncode, res.stderr, res.stdout) == (2, "error: /nope/sweep is not a folder\n", "")

    def crash():
        print("started")
        raise RuntimeError("boom")

    res = run_app(fake_command(monkeypatch, crash))
    assert res.returncode == 1 and res.stdout == "started\n"
    assert res.stderr.startswith("Traceback") and "RuntimeError: boom" in res.stderr
    res = run_app(fake_command(monkeypatch, lambda: sys.exit("no config")))
    assert (res.returncode, res.stderr) == (1, "no config\n")


def test_what_a_command_changes_is_undone(monkeypatch, tmp_path):
    seen = {}

    def meddle():
        seen.update(argv=sys.argv, cwd=os.getcwd(), threads=torch.get_num_threads(), var=os.environ.get("GIVEN"))
        os.environ["SET_BY_COMMAND"] = "1"
        os.chdir(tmp_path)
        torch.manual_seed(1234)
        torch.set_num_threads(3)
        torch.set_default_dtype(torch.float64)
        warnings.filterwarnings("ignore")
        logging.getLogger().addHandler(logging.StreamHandler(sys.stdout))
        logging.getLogger("transformers").setLevel(logging.ERROR)
        library = logging.getLogger("llama2ft-test-library")
        library.addHandler(logging.StreamHandler())  # made during the call: it holds the captured stderr
        library.warning("from a library logger")
        logging.getLogger().warning("from the root logger")

    before = (dict(os.environ), os.getcwd(), torch.get_num_threads(), list(logging.getLogger().handlers),
              logging.getLogger("transformers").level, torch.get_rng_state())
    res = run_app(fake_command(monkeypatch, meddle), "a=1", env={"GIVEN": "x", "OMP_NUM_THREADS": "1"})
    assert res.returncode == 0
    assert seen == {"argv": ["llama2ft-_fake_command", "a=1"], "cwd": str(PROJECT_ROOT), "threads": 1, "var": "x"}
    assert "from a library logger" in res.stderr and "from the root logger" in res.stdout
    assert (dict(os.environ), os.getcwd(), torch.get_num_threads(), list(logging.getLogger().handlers),
            logging.getLogger("transformers").level) == before[:5]
    assert torch.equal(torch.get_rng_state(), before[5]) and torch.get_default_dtype() == torch.float32
    with pytest.warns(UserWarning):  # the command's filter is gone
        warnings.warn("seen again", UserWarning)
    handler = logging.getLogger("llama2ft-test-library").handlers[0]
    assert handler.stream is sys.stderr  # no longer the finished call's buffer
