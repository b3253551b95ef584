"""provenance.json: a run records what made it (packages, commit, hardware, data fingerprints, command), and a
rerun, a resume or a sweep job picking up an unfinished run checks the data it recorded before anything loads."""
from __future__ import annotations

import csv
import getpass
import hashlib
import importlib.metadata as metadata
import json
import platform
import re
import shutil
import socket
import subprocess
from pathlib import Path

import pytest
import torch

from conftest import TrainedRun, run_app
from llama2ft import PROJECT_ROOT
from llama2ft.core import environment
from llama2ft.core.environment import anonymous
from llama2ft.data import cache
from llama2ft.training import sweeps
from llama2ft.training.provenance import environment_now

SAMPLE = PROJECT_ROOT / "data" / "sample"
HYDRA_OWN = (".hydra", "train.log")  # what Hydra itself writes into a run folder before the command starts


def files_of(folder: Path) -> dict[str, bytes]:
    """Every file's bytes, but Hydra's own (.hydra/, the log), which Hydra rewrites before any command runs."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.relative_to(folder).parts[0] not in HYDRA_OWN}


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def recorded_copy(smoke: Path, dest: Path, csv_path: Path, finished: bool = True) -> Path:
    """The session's smoke run copied to `dest`, training on `csv_path` (a copy of the sample csv: the same
    bytes, so the same fingerprint); unfinished (checkpoints, no adapter or metrics) unless `finished`."""
    from omegaconf import OmegaConf

    shutil.copytree(smoke, dest, ignore=None if finished else shutil.ignore_patterns("adapter", "metrics.json"))
    cfg = OmegaConf.load(dest / "config.yaml")
    cfg.data.train_file = str(csv_path)
    OmegaConf.save(cfg, dest / "config.yaml")
    record = json.loads((dest / "provenance.json").read_text(encoding="utf-8"))
    record["data"][0]["path"] = anonymous(str(csv_path.resolve()))
    (dest / "provenance.json").write_text(json.dumps(record), encoding="utf-8")
    return dest


def edit_same_size(path: Path) -> None:
    """One answer changed, the file's size kept (六 and 七 are 3 bytes each in UTF-8): only sha256 tells."""
    old, new = "六百八十".encode(), "七百八十".encode()
    assert old in path.read_bytes()
    path.write_bytes(path.read_bytes().replace(old, new, 1))


@pytest.fixture
def data_copy(tmp_path) -> Path:
    path = tmp_path / "train.csv"
    shutil.copyfile(SAMPLE / "train.csv", path)
    return path


@pytest.mark.slow
def test_a_run_records_what_made_it(smoke_run: TrainedRun):
    run = smoke_run.path
    text = (run / "provenance.json").read_text(encoding="utf-8")
    record = json.loads(text)
    assert record["status"] == "completed" and record["completed"]
    packages = record["packages"]
    assert packages["python"] == platform.python_version()
    for name in ("torch", "transformers", "peft", "accelerate", "datasets", "bitsandbytes",
                 "hydra-core", "omegaconf", "safetensors", "tokenizers"):  # the last four: imported by the run
        assert packages[name] == environment.installed_version(name), name
    assert packages["torch_cuda"] == torch.version.cuda

    git = record["git"]
    if shutil.which("git"):
        head = subprocess.run(["git", "-C", str(PROJECT_ROOT), "rev-parse", "HEAD"], capture_output=True, text=True)
        assert git["commit"] == head.stdout.strip() and isinstance(git["dirty"], bool)
    hardware = record["hardware"]
    assert hardware["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert hardware["world_size"] == 1 and hardware["cpu"]
    assert len(hardware["gpus"]) == (torch.cuda.device_count() if torch.cuda.is_available() else 0)

    stats = json.loads((run / "data_stats.json").read_text(encoding="utf-8"))
    data = record["data"]
    assert [d["role"] for d in data] == ["train", "eval"]
    for entry, path in zip(data, (SAMPLE / "train.csv", SAMPLE / "dev.csv")):
        assert entry["path"] == anonymous(str(path.resolve()))
        assert entry["size"] == path.stat().st_size
        assert entry["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert (data[0]["rows"], data[0]["rows_skipped"]) == (stats["files"][0]["rows"], stats["files"][0]["rows_skipped"])
    assert data[0]["rows"] > 0 and (data[1]["rows"], data[1]["rows_skipped"]) == (stats["eval"]["rows"], 0)
    assert stats["eval_file"] == {"file": str(SAMPLE / "dev.csv"), "rows": data[1]["rows"], "rows_skipped": 0}

    assert "experiment=tiny_smoke" in record["command"]["overrides"]
    assert "experiment=tiny_smoke" in record["command"]["argv"]
    for name in {getpass.getuser(), socket.gethostname()}:  # no user or host name anywhere
        assert not re.search(rf"(?<![A-Za-z0-9_]){re.escape(name)}(?![A-Za-z0-9_])", text), name


def test_git_state_without_a_checkout_or_without_git(tmp_path, monkeypatch):
    assert environment.read_git_state(tmp_path) == {"commit": None, "dirty": None,
                                                    "note": f"{anonymous(str(tmp_path))} is not a git checkout"}
    monkeypatch.setenv("PATH", str(tmp_path))  # no git on the PATH
    assert environment.read_git_state(PROJECT_ROOT)["note"] == "git is not installed"


def test_anonymous_paths():
    home = Path.home()
    assert anonymous(f"data.train_file={home}/data/x.csv") == "data.train_file=~/data/x.csv"
    user = getpass.getuser()
    assert anonymous(f"/tmp/pytest-of-{user}/a.csv") == "/tmp/pytest-of-<user>/a.csv"
    assert anonymous("paths.root_dir=/srv/llama2ft") == "paths.root_dir=/srv/llama2ft"


@pytest.mark.slow
def test_edited_csv_refuses_the_rerun_before_any_model(smoke_run: TrainedRun, tmp_path, data_copy, monkeypatch):
    source = recorded_copy(smoke_run.path, tmp_path / "run", data_copy)
    edit_same_size(data_copy)
    before = files_of(source)
    rerun = ["--config-path", str(source), "--config-name", "config"]
    res = run_app("train", *rerun, f"hydra.run.dir={tmp_path}/again")
    assert res.returncode == 2 and "Traceback" not in res.stderr
    [line] = error_lines(res.stderr)
    new = hashlib.sha256(data_copy.read_bytes()).hexdigest()
    assert f"data file {data_copy} (size {data_copy.stat().st_size} bytes as before, sha256 " in line
    assert f"-> {new[:16]}..." in line and "data.allow_changed=true" in line
    assert "method=sft" not in res.stdout and "model:" not in res.stdout  # stopped in step 1, before data and model
    assert files_of(source) == before  # the recorded run is untouched
    assert not (tmp_path / "again" / "config.yaml").exists() and not (tmp_path / "again" / "provenance.json").exists()

    # data.allow_changed=true goes on, with warnings: the data file, and a package version, the ISA and the commit
    record = json.loads((source / "provenance.json").read_text(encoding="utf-8"))
    record["packages"]["transformers"] = "0.0.1"
    record["hardware"]["cpu_capability"] = "VSX"
    record["git"]["commit"] = "0" * 40
    (source / "provenance.json").write_text(json.dumps(record), encoding="utf-8")
    hashed: list[str] = []
    sha256 = cache._sha256
    monkeypatch.setattr(cache, "_sha256", lambda p: hashed.append(str(p)) or sha256(p))
    res = run_app("train", *rerun, "data.allow_changed=true", "trainer.max_steps=1", f"hydra.run.dir={tmp_path}/on")
    assert res.returncode == 0, res.stderr[-3000:]
    warnings = [line for line in res.stderr.splitlines() if line.startswith("warning:")]
    assert any(line.startswith(f"warning: data file {data_copy} (size") and "going on" in line for line in warnings)
    assert f"warning: transformers: 0.0.1 -> {metadata.version('transformers')} (the run in {source} -> this run)" \
        in warnings
    assert f"warning: cpu capability: VSX -> {torch.backends.cpu.get_cpu_capability()} (the run in {source} -> " \
           "this run)" in warnings
    assert any(line.startswith(f"warning: llama2ft commit: {'0' * 40} -> ") for line in warnings)
    assert len([line for line in warnings if line.endswith(f"(the run in {source} -> this run)")]) == 3  # one each
    hashed = sorted(str(Path(h).resolve()) for h in hashed)
    assert hashed == sorted([str(data_copy.resolve()), str((SAMPLE / "dev.csv").resolve())])  # each file once
    on = json.loads((tmp_path / "on" / "provenance.json").read_text(encoding="utf-8"))
    assert on["status"] == "completed" and on["data"][0]["sha256"] == new
    assert on["rerun_of"]["run"] == anonymous(str(source)) and len(on["rerun_of"]["data_changed"]) == 1
    assert f"transformers: 0.0.1 -> {metadata.version('transformers')}" in on["rerun_of"]["differences"]


@pytest.mark.slow
def test_edited_csv_refuses_a_resume_and_a_sweep_job(smoke_run: TrainedRun, tmp_path, data_copy):
    run = recorded_copy(smoke_run.path, tmp_path / "run", data_copy, finished=False)
    sweep_job = recorded_copy(smoke_run.path, tmp_path / "sweep" / "0", data_copy, finished=False)
    with data_copy.open("a", encoding="utf-8") as f:  # one more row: a new size
        f.write('"<s>Human: 九用中文怎么写？\n</s><s>Assistant: 九\n</s>"\n')
    size = data_copy.stat().st_size
    before = files_of(run)
    same_command = ["experiment=tiny_smoke", f"data.train_file={data_copy}"]
    res = run_app("train", *same_command, f"hydra.run.dir={run}")  # what a requeued job runs again
    assert res.returncode == 2 and "Traceback" not in res.stderr
    [line] = error_lines(res.stderr)
    assert f"data file {data_copy} (size " in line and f"-> {size} bytes, sha256 " in line
    assert "method=sft" not in res.stdout and "resuming from" not in res.stdout
    assert files_of(run) == before

    before = files_of(sweep_job)
    res = run_app("train", "-m", *same_command, f"hydra.sweep.dir={tmp_path}/sweep")
    assert res.returncode == 0 and "method=sft" not in res.stdout  # the sweep goes on; this job stopped in step 1
    [row] = list(csv.DictReader((tmp_path / "sweep" / "sweep_summary.csv").open(encoding="utf-8")))
    assert row["status"].startswith(f"failed: data file {data_copy} (size ")
    assert {k: v for k, v in files_of(sweep_job).items() if k != "FAILED"} == before


def test_sweep_summary_states_the_environment_once_and_flags_other_versions(tmp_path):
    record = environment_now()  # what a job records (its packages, commit, hardware)
    versions = {"0": None, "1": "9.9.9", "2": None}
    for job, version in versions.items():
        folder = tmp_path / job
        (folder / ".hydra").mkdir(parents=True)
        (folder / ".hydra" / "overrides.yaml").write_text(f"- lora.r={job}\n", encoding="utf-8")
        (folder / "metrics.json").write_text(json.dumps({"eval_loss": 1.0 + int(job)}), encoding="utf-8")
        own = json.loads(json.dumps(record))
        if version:
            own["packages"]["transformers"] = version
        if job == "2":
            own["resumed"] = [{"differences": ["peft: 0.1 -> 0.2"]}]
        (folder / "provenance.json").write_text(json.dumps(own), encoding="utf-8")
    rows = {r["run"]: r["environment"] for r in sweeps.write(tmp_path)}
    assert rows == {"0": "", "1": f"transformers 9.9.9 (sweep: {record['packages']['transformers']})",
                    "2": "resumed with peft: 0.1 -> 0.2"}
    md = (tmp_path / "sweep_summary.md").read_text(encoding="utf-8")
    assert md.count("Environment: ") == 1
    assert f"transformers {record['packages']['transformers']}" in md and f"torch {record['packages']['torch']}" in md
    saved = list(csv.DictReader((tmp_path / "sweep_summary.csv").open(encoding="utf-8")))
    assert {r["run"]: r["environment"] for r in saved} == rows
