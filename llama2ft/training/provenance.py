"""A run's provenance.json: what made it, written (atomically) when the run starts and completed when it
ends: `packages`, `git` and `hardware` (core/environment.py), `data` (each input file's path, size and
sha256, from data/cache.py's one fingerprint, and the rows it gave) and `command` (command line, Hydra
overrides).

A run that continues or repeats another first checks that run's record (`begin`): a resume of this
folder's checkpoints (trainer.resume, a requeued job, a sweep job picking up an unfinished run), or the
documented rerun `llama2ft-train --config-path RUN --config-name config`. An input file whose size or
sha256 changed stops the run with one error line before anything loads, unless data.allow_changed=true
(then a warning, and the record says so); another package version, commit or hardware is one warning
line each."""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from llama2ft import PROJECT_ROOT
from llama2ft.core import environment
from llama2ft.core.environment import anonymous
from llama2ft.core.errors import DataError
from llama2ft.data.cache import file_digest, file_size, forget_digests
from llama2ft.data.mixing import train_files
from llama2ft.model.run_folder import RunDir
from llama2ft.training import distributed

FORMAT = 1  # of the record; bump when a key changes meaning


@dataclass
class Provenance:
    """The record of the running run; only the main process writes it."""

    run: RunDir
    record: dict

    def data_read(self, stats: dict) -> None:
        """The rows each input gave, once the data step is done (data_stats.json holds the rest)."""
        files = iter(stats.get("files", []))
        for entry in self.record["data"]:
            counts = next(files, {}) if entry["role"] == "train" else stats.get("eval_file") or {}
            entry["rows"], entry["rows_skipped"] = counts.get("rows"), counts.get("rows_skipped")
        self._write()

    def complete(self) -> None:
        """The run ended: the libraries it imported since it started are added."""
        recorded = self.record["packages"]
        recorded.update({k: v for k, v in environment.packages().items() if k not in recorded})
        self.record.update(status="completed", completed=_now())
        self._write()

    def _write(self) -> None:
        if distributed.is_main_process():
            self.run.write_provenance(self.record)


def begin(cfg: Any, run: RunDir) -> Provenance:
    """Fingerprint the inputs (each file read once this run), check them against the record of the run
    this one resumes or reruns, and write the run's record."""
    forget_digests()
    paths = input_files(cfg.data)
    data = [{"role": role, "path": anonymous(str(Path(p).expanduser().resolve())), "size": file_size(p),
             "sha256": file_digest(p), "rows": None, "rows_skipped": None} for role, p in paths]
    source, earlier, kind = earlier_record(run)
    now = environment_now(include=(earlier.get("packages") or {}))
    record: dict = {"format": FORMAT, "status": "started", "started": _now(), "completed": None,
                    "command": command(), **now, "data": data}
    if earlier:
        where = anonymous(str(source))
        changed = changed_inputs(earlier.get("data") or [], data, [p for _, p in paths])
        if changed and not cfg.data.allow_changed:
            raise DataError(f"data file{'s' if len(changed) > 1 else ''} {'; '.join(changed)}: changed since the "
                            f"run in {source} recorded {'them' if len(changed) > 1 else 'it'}; restore "
                            f"{'them' if len(changed) > 1 else 'it'}, or set data.allow_changed=true to train on "
                            "the new contents")
        differences = [f"{what}: {old} -> {new}" for what, old, new in environment.differences(earlier, now)]
        if distributed.is_main_process():
            for line in [*(f"data file {c} changed since the run in {source} recorded it; going on with the new "
                           "contents (data.allow_changed=true)" for c in changed),
                         *(f"{d} (the run in {source} -> this run)" for d in differences)]:
                print(f"warning: {line}", file=sys.stderr, flush=True)
        note = {"run": where, "time": _now(), "differences": differences,
                "data_changed": [anonymous(c) for c in changed]}
        if kind == "resume":  # the record stays the first attempt's; each resume adds what it found
            record = {**earlier, "status": "started", "completed": None, "data": data,
                      "resumed": [*earlier.get("resumed", []), {**note, "command": command()}]}
        else:
            record["rerun_of"] = note
    provenance = Provenance(run, record)
    provenance._write()
    return provenance


def input_files(data: Any) -> list[tuple[str, str]]:
    """(role, path) of every data file a run reads: its train files, then its eval file."""
    return [*(("train", p) for p in train_files(data)), *([("eval", str(data.eval_file))] if data.eval_file else [])]


def environment_now(include: Any = ()) -> dict:
    return {"packages": environment.packages(include), "git": environment.git_state(PROJECT_ROOT),
            "hardware": environment.hardware(distributed.world_size())}


def command() -> dict:
    """The command line and the Hydra overrides it gave (paths anonymous)."""
    overrides: list[str] = []
    try:
        from hydra.core.hydra_config import HydraConfig

        if HydraConfig.initialized():
            overrides = list(HydraConfig.get().overrides.task)
    except ImportError:
        pass
    return {"program": Path(sys.argv[0]).name, "argv": [anonymous(a) for a in sys.argv[1:]],
            "overrides": [anonymous(o) for o in overrides]}


def rerun_source() -> Optional[Path]:
    """The run folder this command reruns: the `--config-path` of `--config-name config` when it is one."""
    try:
        from hydra.core.hydra_config import HydraConfig
    except ImportError:
        return None
    if not HydraConfig.initialized():
        return None
    for source in HydraConfig.get().runtime.config_sources:
        if source.provider == "main" and source.schema == "file":
            path = Path(source.path)
            if RunDir(path).is_run():
                return path
    return None


def earlier_record(run: RunDir) -> tuple[Optional[Path], dict, str]:
    """(folder, its record, "resume" | "rerun") of the run this one continues or repeats, else (None, {}, "")."""
    if run.has_checkpoints() and run.provenance.is_file():
        return run.path, run.read_provenance(), "resume"
    source = rerun_source()
    if source is not None and source.resolve() != run.path.resolve():
        record = RunDir(source).read_provenance()
        if record:
            return source, record, "rerun"
    return None, {}, ""


def changed_inputs(recorded: list[dict], current: list[dict], shown: list[str]) -> list[str]:
    """`path (what changed)` for each current input whose recorded size or sha256 differs (inputs the
    record does not name are new choices, not changes)."""
    before = {entry["path"]: entry for entry in recorded if entry.get("sha256")}
    out = []
    for entry, path in zip(current, shown):
        old = before.get(entry["path"])
        if old is None or (old["sha256"] == entry["sha256"] and old.get("size") == entry["size"]):
            continue
        size = (f"size {old.get('size')} -> {entry['size']} bytes" if old.get("size") != entry["size"]
                else f"size {entry['size']} bytes as before")
        out.append(f"{path} ({size}, sha256 {old['sha256'][:16]}... -> {entry['sha256'][:16]}...)")
    return out


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")
