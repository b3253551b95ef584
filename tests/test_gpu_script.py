"""bench/gpu_run.sh, the prepared GPU measurement, runs end to end on CPU (DEVICE=cpu: tiny shapes, the same stages
and commands) and writes its JSON results; the GPU figures themselves can only come from a GPU machine."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

from conftest import shared_file
from llama2ft import PROJECT_ROOT

SCRIPT = PROJECT_ROOT / "bench" / "gpu_run.sh"


def test_script_parses():
    assert subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True).returncode == 0


# The dry run's stages, as two calls of the script at once (STAGES=...): the checks and benches beside the chain
# model -> train -> merge -> chat. Each stage runs on one thread and mostly imports, so on 2 cores the two calls
# take about half the time of one call with all stages.
GROUPS = {"bench": "checks bench_synthetic bench_sharegpt", "commands": "model train_nf4 train_bf16 merge chat"}


@pytest.mark.slow
def test_dry_run_on_cpu_runs_every_stage(tmp_path):
    shared_file("dev_sft_sharegpt.csv")
    procs = {}
    for name, stages in GROUPS.items():
        env = {**os.environ, "DEVICE": "cpu", "PY": sys.executable, "OUT": str(tmp_path / name / "out"),
               "WORK": str(tmp_path / name / "work"), "OMP_NUM_THREADS": "1", "STAGES": stages}
        with open(tmp_path / f"{name}.stdout", "w") as out:
            procs[name] = subprocess.Popen(["bash", str(SCRIPT)], stdout=out, stderr=subprocess.STDOUT, env=env,
                                           start_new_session=True)
    try:
        codes = {name: proc.wait(timeout=900) for name, proc in procs.items()}
    finally:
        for proc in procs.values():
            if proc.poll() is None:  # overran: the script and its stages
                os.killpg(proc.pid, signal.SIGKILL)
    logs = {name: (tmp_path / name / "out" / "gpu_run.log").read_text() for name in GROUPS}
    for name, code in codes.items():
        assert code == 0, (tmp_path / f"{name}.stdout").read_text()[-3000:] + logs[name][-2000:]
    results = {name: tmp_path / name / "out" / "bench" / "results" for name in GROUPS}
    commands = json.loads((results["commands"] / "gpu-commands.json").read_text())
    bench_commands = json.loads((results["bench"] / "gpu-commands.json").read_text())
    assert commands["device"] == bench_commands["device"] == "cpu"
    stages = ("checks", "bench_synthetic", "bench_sharegpt", "model", "train_nf4", "train_bf16", "merge", "chat")
    assert {**bench_commands["stages_rc"], **commands["stages_rc"]} == {s: "0" for s in stages}, logs
    nf4, bf16 = commands["run-nf4"], commands["run-bf16"]
    assert nf4["quantized_layers"].get("Linear4bit", 0) > 0 and nf4["gradient_checkpointing"] is True
    assert bf16["quantized_layers"] == {} and bf16["gradient_checkpointing"] is False  # auto: a tiny step fits
    assert nf4["attention"] == bf16["attention"] == "llama2ft_varlen_sdpa" and nf4["kernels"] == "none"
    assert "config.json" in commands["merged_files"] and commands["chat_output_tail"]
    checks = json.loads((results["bench"] / "gpu-checks.json").read_text())
    assert all(r["equal"] for r in checks["attention"].values()), checks
    assert checks["liger"]["match"] and checks["liger"]["applied"] is False
    for name in ("synthetic", "sharegpt"):
        bench = json.loads((results["bench"] / f"gpu-bench-{name}.json").read_text())
        assert bench["device"] == "cpu" and bench["speedup"] > 0 and bench["llama2ft_error"] is None
        assert bench["llama2ft_attention"] == "llama2ft_varlen_sdpa" and bench["baseline_attention"] == "sdpa"
