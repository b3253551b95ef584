"""The one owner of a training run's folder (hydra.run.dir of llama2ft-train): every file name in it and
how each part is written and read back. Training writes through `RunDir`; sweeps, merge, the model card,
chat, web, API and eval read through `RunDir` and `read_run`. Also the chat settings file that a merged
model carries (written by llama2ft-merge beside a published model).

A finished run holds config.yaml (the resolved training config), data_stats.json, preview.jsonl,
adapter/ (LoRA) or model/ (full fine-tuning), tokenizer/, metrics.json and loss.png; base_model/ when it
trained the embedded tiny model; checkpoints/ while (and after) it trains, each checkpoint-<step>/ counting
only once its completion record (llama2ft-complete.json) is written; state.json (training, interrupted with
its step, finished); log.jsonl (one JSON object per Trainer log event, appended as training goes: the
curves of the studio and loss.png); completions.jsonl (GRPO: a sample of the answers of each logging step with
their rewards); provenance.json (what made the run: packages, commit, hardware, data
fingerprints, command; training/provenance.py), written when it starts and completed when it ends.
"""
from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

from omegaconf import DictConfig, OmegaConf

from llama2ft.core.errors import UserError
from llama2ft.core.files import atomic_file
from llama2ft.model.rope import scaling_of

# Written by llama2ft-merge beside a published model: its template and system prompt, so that chat, web,
# API and eval render prompts the way the model was trained without being told.
CHAT_META_FILE = "llama2ft.json"


class RunDir:
    """The layout of one run folder: its parts' paths, and reading/writing the small files."""

    CONFIG = "config.yaml"
    STATS = "data_stats.json"
    PREVIEW = "preview.jsonl"
    METRICS = "metrics.json"
    LOSS_PLOT = "loss.png"
    ADAPTER = "adapter"
    MODEL = "model"  # a full fine-tune's weights (lora=full)
    TOKENIZER = "tokenizer"
    BASE_MODEL = "base_model"  # the embedded tiny base, built from model.init
    CHECKPOINTS = "checkpoints"
    INITIAL_ADAPTER = "adapter_init"  # a PiSSA/OLoRA adapter as it was before training
    FAILED = "FAILED"  # a sweep job that stopped on bad input: its error message
    STATE = "state.json"  # what the run is doing: training, interrupted (its step, checkpoint, signal), finished
    PROVENANCE = "provenance.json"  # what made the run (training/provenance.py); merge copies it beside the weights
    CHECKPOINT_PREFIX = "checkpoint-"  # the HF Trainer's checkpoints/checkpoint-<step>/
    # written last into a checkpoint folder: its files' sizes and sha256 (training/checkpoints.py)
    CHECKPOINT_COMPLETE = "llama2ft-complete.json"
    # one JSON object per Trainer log event ({"step", "max_steps", "epoch", "time", "loss", ...}), appended and
    # flushed as training goes; a resumed run drops what came after its checkpoint and goes on in the same file
    LOG = "log.jsonl"
    COMPLETIONS = "completions.jsonl"  # GRPO: a sample of the answers of each logging step, with their rewards

    def __init__(self, path: Union[str, Path]):
        self.path = Path(path).expanduser()

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    @property
    def config(self) -> Path:
        return self.path / self.CONFIG

    @property
    def metrics(self) -> Path:
        return self.path / self.METRICS

    @property
    def stats(self) -> Path:
        return self.path / self.STATS

    @property
    def preview(self) -> Path:
        return self.path / self.PREVIEW

    @property
    def adapter(self) -> Path:
        return self.path / self.ADAPTER

    @property
    def model(self) -> Path:
        return self.path / self.MODEL

    @property
    def tokenizer(self) -> Path:
        return self.path / self.TOKENIZER

    @property
    def base_model(self) -> Path:
        return self.path / self.BASE_MODEL

    @property
    def checkpoints(self) -> Path:
        return self.path / self.CHECKPOINTS

    @property
    def initial_adapter(self) -> Path:
        return self.path / self.INITIAL_ADAPTER

    @property
    def loss_plot(self) -> Path:
        return self.path / self.LOSS_PLOT

    @property
    def failed(self) -> Path:
        return self.path / self.FAILED

    @property
    def state(self) -> Path:
        return self.path / self.STATE

    @property
    def log(self) -> Path:
        return self.path / self.LOG

    @property
    def completions(self) -> Path:
        return self.path / self.COMPLETIONS

    @property
    def provenance(self) -> Path:
        return self.path / self.PROVENANCE

    def checkpoint(self, step: int) -> Path:
        return self.checkpoints / f"{self.CHECKPOINT_PREFIX}{step}"

    def checkpoint_steps(self) -> list[int]:
        """The steps of the checkpoint folders there are (complete or not), oldest first."""
        if not self.checkpoints.is_dir():
            return []
        pattern = re.compile(re.escape(self.CHECKPOINT_PREFIX) + r"(\d+)")
        found = (pattern.fullmatch(p.name) for p in self.checkpoints.iterdir() if p.is_dir())
        return sorted(int(m.group(1)) for m in found if m)

    def recorded(self, step: int) -> bool:
        """Checkpoint `step` has its completion record (whether it matches the files: training/checkpoints.py)."""
        return (self.checkpoint(step) / self.CHECKPOINT_COMPLETE).is_file()

    def is_run(self) -> bool:
        return self.config.is_file()

    def finished_parts(self) -> list[str]:
        """What only a finished run has (empty for a new or unfinished run)."""
        return [p for p in (self.ADAPTER, self.MODEL, self.METRICS) if (self.path / p).exists()]

    def is_finished(self) -> bool:
        return self.is_run() and self.metrics.is_file()

    def has_checkpoints(self) -> bool:
        return bool(self.checkpoint_steps())

    def write_config(self, cfg: Any) -> None:
        OmegaConf.save(cfg, self.config, resolve=True)

    def read_config(self) -> DictConfig:
        return OmegaConf.load(self.config)  # type: ignore[return-value]

    def write_stats(self, stats: dict) -> None:
        _write_json(self.stats, stats)

    def read_stats(self) -> dict:
        return _read_json(self.stats)

    def write_metrics(self, metrics: dict) -> None:
        _write_json(self.metrics, metrics)

    def read_metrics(self) -> dict:
        return _read_json(self.metrics)

    def write_state(self, state: str, **details: Any) -> None:
        _write_json(self.state, {"state": state, **details, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")})

    def read_state(self) -> dict:
        return _read_json(self.state)

    def append_log(self, entry: dict) -> None:
        """One log event, flushed at once (a reader sees whole lines; a kill loses at most the line being written)."""
        with self.log.open("a", encoding="utf-8") as f:
            f.write(json.dumps(entry, ensure_ascii=False) + "\n")

    def read_log(self, path: Optional[Path] = None) -> list[dict]:
        """The log events in order ([] without a log); a line cut short by a kill is skipped. `path`: another
        log of the run written the same way (completions.jsonl)."""
        path = path or self.log
        if not path.is_file():
            return []
        entries = []
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(entry, dict):
                entries.append(entry)
        return entries

    def trim_log(self, step: int) -> None:
        """Keep only the events up to `step` (where a resumed run continues; 0: a new start) in log.jsonl and
        completions.jsonl, atomically: the steps after it run again."""
        for path in (self.log, self.completions):
            if path.is_file():
                kept = [e for e in self.read_log(path) if int(e.get("step", 0)) <= step]
                with atomic_file(path) as tmp:
                    tmp.write_text("".join(json.dumps(e, ensure_ascii=False) + "\n" for e in kept), encoding="utf-8")

    def write_provenance(self, record: dict) -> None:
        _write_json(self.provenance, record)

    def read_provenance(self) -> dict:
        """The run's provenance record ({} for a run made before runs recorded one)."""
        return _read_json(self.provenance)

    def failure(self) -> Optional[str]:
        """The error a sweep job stopped on, if it did."""
        return self.failed.read_text(encoding="utf-8").strip() if self.failed.is_file() else None


def _write_json(path: Path, data: dict) -> None:
    """Atomically: a full disk or a kill leaves the old file (or none), never half of the new one."""
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _read_json(path: Path) -> dict:
    """The file's object, {} when the file is not there."""
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


@dataclass
class RunFolder:
    """A finished run, read back: what merge, chat, web, API, eval and a preference start take from it."""

    path: Path
    cfg: DictConfig  # the run's resolved config.yaml
    adapter: Optional[Path]  # adapter/ of a LoRA run
    model: Optional[Path]  # model/ of a full fine-tune (lora=full)
    tokenizer: Path

    @property
    def dir(self) -> RunDir:
        return RunDir(self.path)

    @property
    def tiny(self) -> bool:
        """Trained on the embedded random-init model, saved in the run's base_model/."""
        return self.cfg.model.name_or_path is None

    @property
    def base(self) -> str:
        """What the adapter was trained on: a folder or hub id, or the run's base_model/."""
        return str(self.dir.base_model) if self.tiny else str(self.cfg.model.name_or_path)

    @property
    def template(self) -> str:
        return str(self.cfg.template.name)

    @property
    def system(self) -> Optional[str]:
        return self.cfg.template.system

    @property
    def rope_scaling(self) -> Optional[dict]:
        """The run's model.rope_scaling ({rope_type, factor}), to load its base the way it trained."""
        return scaling_of(self.cfg.model.get("rope_scaling"))

    @property
    def quant(self) -> str:
        return str(self.cfg.quant.mode)


def is_run_folder(path: Union[str, Path]) -> bool:
    return RunDir(path).is_run()


def read_run(path: Union[str, Path]) -> RunFolder:
    """The parts of a finished run; a folder that is no run, or an unfinished one, is one UserError."""
    run = RunDir(path)
    if not run.is_run():
        raise UserError(f"{run.path} is not a training run folder (no {RunDir.CONFIG}); "
                        "pass run=<hydra.run.dir of llama2ft-train>")
    adapter = run.adapter if run.adapter.is_dir() else None
    model = run.model if run.model.is_dir() else None
    if adapter is None and model is None:
        raise UserError(f"{run.path} has no {RunDir.ADAPTER}/ folder (nor {RunDir.MODEL}/): the run is unfinished "
                        "or failed")
    tokenizer = run.tokenizer if run.tokenizer.is_dir() else (adapter or model)
    return RunFolder(run.path, run.read_config(), adapter, model, tokenizer)


def check_adapter(path: Union[str, Path]) -> None:
    if not (Path(path) / "adapter_config.json").is_file():
        raise UserError(f"{path} is not a peft adapter folder (no adapter_config.json)")


def tokenizer_source(adapter: Optional[Union[str, Path]], base: Union[str, Path]) -> str:
    """An adapter's own tokenizer (saved by training) if it has one, else the base model's."""
    if adapter is not None and (Path(adapter) / "tokenizer_config.json").is_file():
        return str(adapter)
    return str(base)


def holds_scorer(path: Union[str, Path]) -> bool:
    """Whether a run folder (its adapter/ or model/) or a model folder holds a scorer (a sequence-classification
    model with one output: a reward model, method=rm) rather than a causal LM; reads config files only."""
    from llama2ft.model.lora import adapter_task, task_type

    folder = Path(path).expanduser()
    if is_run_folder(folder):
        run = RunDir(folder)
        if (run.adapter / "adapter_config.json").is_file():
            return adapter_task(run.adapter) == task_type(True)
        folder = run.model
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    architectures = config.get("architectures") if isinstance(config, dict) else None
    return any(str(a).endswith("ForSequenceClassification") for a in architectures or [])


def write_chat_meta(folder: Path, template: str, system: Optional[str]) -> None:
    meta = {"template": template, "system": system}
    (folder / CHAT_META_FILE).write_text(json.dumps(meta, ensure_ascii=False, indent=2), encoding="utf-8")


def read_chat_meta(folder: Path) -> dict:
    """The template and system prompt a merged folder was published with ({} for other folders)."""
    path = folder / CHAT_META_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
