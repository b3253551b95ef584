"""Where a run starts, as values rather than edits of the running config.

`init_from` (a training run folder or a merged model folder) gives a new config that points at what it
holds (its base, tokenizer, template and LoRA shape) and a `Start` (the adapter that keeps training).
A method that continues an SFT model (`Method.starts_from_sft`: the preference methods) on the embedded
default with no start trains from the embedded SFT model: its
config is derived from the run's own, with the sample data and the tiny SFT recipe
(configs/tiny_method/sft.yaml, the same file `llama2ft-train` with no overrides composes).

Starting from an SFT run, its adapter keeps training, and the new run folder is a plain LoRA run on that
base: merging the SFT adapter first would need the merged base written somewhere (a second 13 GB copy
for a 7B model) for merge/chat to find it; a continued adapter needs nothing new.
"""
from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from omegaconf import DictConfig, OmegaConf, open_dict

from llama2ft import CONFIG_DIR
from llama2ft.model.run_folder import RunDir, is_run_folder, read_chat_meta, read_run


@dataclass(frozen=True)
class Start:
    """What a run starts from besides its config's model: a trained adapter that keeps training, and the
    embedded base it was trained on (copied into this run's folder, so the folder stands on its own)."""

    trained_adapter: Optional[str] = None  # keeps training (an SFT run's adapter/)
    base_model: Optional[Path] = None
    source: Optional[str] = None  # init_from, for the log


SFT_PARTS = ("model", "lora", "quant", "data", "template", "trainer")  # what names an embedded SFT start
SFT_RECIPE = CONFIG_DIR / "tiny_method" / "sft.yaml"
SFT_DATA = CONFIG_DIR / "data" / "sample.yaml"


def start_problems(cfg: DictConfig) -> list[str]:
    """Problems of `init_from` (collected with the other config problems)."""
    if cfg.init_from is None:
        return []
    path = Path(cfg.init_from).expanduser()
    if not (is_run_folder(path) or (path / "config.json").is_file()):
        return [f"init_from={cfg.init_from!r}: not a training run folder ({RunDir.CONFIG}) nor a model folder "
                "(config.json)"]
    if cfg.model.name_or_path is not None and not is_run_folder(path):
        return ["init_from and model.name_or_path both name a model: set one of them"]
    return []


def needs_embedded_start(cfg: DictConfig, starts_from_sft: bool) -> bool:
    """A run of a method that continues an SFT model (`Method.starts_from_sft`), told nothing about its start:
    it starts from the embedded SFT model."""
    return starts_from_sft and cfg.init_from is None and cfg.model.name_or_path is None


def embedded_sft_config(cfg: DictConfig, sft_settings: Any) -> DictConfig:
    """The embedded SFT run a preference run `cfg` starts from: `cfg` with method `sft_settings`, the
    sample data and the tiny SFT recipe's trainer and sample_eval settings."""
    sft = copy.deepcopy(cfg)
    with open_dict(sft):
        sft.method, sft.init_from = sft_settings, None
    recipe = OmegaConf.load(SFT_RECIPE)
    return OmegaConf.merge(sft, {"data": OmegaConf.load(SFT_DATA)}, recipe)  # type: ignore[return-value]


def embedded_start_folder(sft_cfg: DictConfig, out_dir: Path) -> Path:
    """Where the SFT run of `sft_cfg` lives: beside `out_dir`, named by a hash of its settings (a run
    with other settings makes its own)."""
    settings = json.dumps({k: OmegaConf.to_container(sft_cfg[k], resolve=True) for k in SFT_PARTS}, sort_keys=True)
    return out_dir.parent / f"tiny-sft-{hashlib.sha256(settings.encode()).hexdigest()[:10]}"


def with_init_from(cfg: DictConfig, folder: Path) -> DictConfig:
    new = copy.deepcopy(cfg)
    new.init_from = str(folder)
    return new


def from_init(cfg: DictConfig) -> tuple[DictConfig, Start]:
    """A new config pointing at what `init_from` holds (an SFT run's base, tokenizer, template and LoRA
    settings, or a merged folder's model, tokenizer and template), and the Start of the run."""
    if cfg.init_from is None:
        return cfg, Start()
    start = Path(cfg.init_from).expanduser().resolve()
    new = copy.deepcopy(cfg)
    with open_dict(new):
        if not is_run_folder(start):  # a merged (or any full) model folder
            new.model.name_or_path, new.model.tokenizer, new.model.init = str(start), str(start), None
            meta = read_chat_meta(start)
            if meta:
                new.template.name, new.template.system = meta["template"], meta.get("system")
            return new, Start(source=cfg.init_from)
        run = read_run(start)
        new.template.name, new.template.system = run.template, run.system
        new.model.tokenizer = str(run.tokenizer.resolve())
        for key, value in run.cfg.lora.items():  # the adapter keeps its own shape
            new.lora[key] = value
        base_model = None
        if run.tiny:  # the embedded base is small: copied, so the new run folder stands on its own
            base_model = run.dir.base_model
            for key, value in run.cfg.model.init.items():
                new.model.init[key] = value
        else:
            new.model.name_or_path = run.cfg.model.name_or_path
        for key in ("revision", "trust_remote_code", "resize_init"):
            new.model[key] = run.cfg.model[key]
        if run.model is not None:  # an SFT run that fine-tuned in full: its model/ is the start
            new.model.name_or_path = str(run.model.resolve())
            return new, Start(source=cfg.init_from)
        return new, Start(str(run.adapter.resolve()), base_model, cfg.init_from)
