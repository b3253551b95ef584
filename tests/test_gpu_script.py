"""bench/gpu_run.sh, the prepared GPU measurement, runs end to end on CPU (DEVICE=cpu: tiny shapes, the same stages
and commands) and writes its JSON results; the GPU figures themselves can only come from a GPU machine."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from conftest import shared_file
from llama2ft import PROJECT_ROOT

SCRIPT = PROJECT_ROOT / "bench" / "gpu_run.sh"


def test_script_parses():
    assert subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True).returncode == 0


@pytest.mark.slow
def test_dry_run_on_cpu_runs_every_stage(tmp_path):
    shared_file("dev_sft_sharegpt.csv")
    env = {**os.environ, "DEVICE": "cpu", "PY": sys.executable, "OUT": str(tmp_path / "out"),
           "WORK": str(tmp_path / "work"), "OMP_NUM_THREADS": "1"}
    res = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, env=env, timeout=900)
    log = (tmp_path / "out" / "gpu_run.log").read_text()
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-2000:]
    results = tmp_path / "out" / "bench" / "results"
    commands = json.loads((results / "gpu-commands.json").read_text())
    assert commands["device"] == "cpu"
    stages = ("checks", "bench_synthetic", "bench_sharegpt", "model", "train_nf4", "train_bf16", "merge", "chat")
    assert commands["stages_rc"] == {s: "0" for s in stages}, log[-3000:]
    nf4, bf16 = commands["run-nf4"], commands["run-bf16"]
    assert nf4["quantized_layers"].get("Linear4bit", 0) > 0 and nf4["gradient_checkpointing"] is True
    assert bf16["quantized_layers"] == {} and bf16["gradient_checkpointing"] is False  # auto: a tiny step fits
    assert nf4["attention"] == bf16["attention"] == "llama2ft_varlen_sdpa" and nf4["kernels"] == "none"
    assert "config.json" in commands["merged_files"] and commands["chat_output_tail"]
    checks = json.loads((results / "gpu-checks.json").read_text())
    assert all(r["equal"] for r in checks["attention"].values()), checks
    assert checks["liger"]["match"] and checks["liger"]["applied"] is False
    for name in ("synthetic", "sharegpt"):
        bench = json.loads((results / f"gpu-bench-{name}.json").read_text())
        assert bench["device"] == "cpu" and bench["speedup"] > 0 and bench["llama2ft_error"] is None
        assert bench["llama2ft_attention"] == "llama2ft_varlen_sdpa" and bench["baseline_attention"] == "sdpa"
