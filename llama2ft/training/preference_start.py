"""Where a preference run on the embedded default starts: the tiny SFT run, made once and reused."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from llama2ft.data.pairs import read_pairs
from llama2ft.model.run_folder import is_run_folder
from llama2ft.training import distributed
from llama2ft.training.recipe import run_training, say

SFT_PARTS = ("model", "lora", "quant", "data", "template", "trainer")


def needs_tiny_sft(cfg: DictConfig) -> bool:
    """A preference run told nothing about its start: it starts from the embedded tiny SFT model."""
    return cfg.method.name != "sft" and cfg.init_from is None and cfg.model.name_or_path is None


def sft_folder(sft_cfg: DictConfig, out_dir: Path) -> Path:
    """Where the SFT run of `sft_cfg` lives: beside `out_dir`, named by a hash of its settings."""
    settings = json.dumps({k: OmegaConf.to_container(sft_cfg[k], resolve=True) for k in SFT_PARTS}, sort_keys=True)
    return out_dir.parent / f"tiny-sft-{hashlib.sha256(settings.encode()).hexdigest()[:10]}"


def tiny_sft_run(cfg: DictConfig, sft_cfg: DictConfig, out_dir: Path) -> Path:
    """The finished SFT run of `sft_cfg` beside `out_dir` (named by a hash of its settings): reused when
    it is there, trained (or resumed) otherwise. The pairs files are checked first: a bad file fails
    before minutes of SFT."""
    for path in (cfg.data.train_file, cfg.data.eval_file):
        if path:
            read_pairs(path, cfg.data.encoding, cfg.data.skip_bad_rows)
    folder = sft_folder(sft_cfg, out_dir)
    if is_run_folder(folder) and (folder / "metrics.json").is_file():
        say(f"starting from the embedded SFT model {folder} (made by an earlier run)")
        return folder
    say(f"method={cfg.method.name} on the embedded default: first the tiny SFT model ({folder}), "
        "as `llama2ft-train` makes it")
    folder.mkdir(parents=True, exist_ok=True)
    run_training(sft_cfg, folder, resume=(folder / "checkpoints").is_dir())
    distributed.barrier()
    say(f"\nnow method={cfg.method.name} from {folder}\n")
    return folder
