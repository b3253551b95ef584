"""The folders llama2ft writes and reads back: a finished training run (hydra.run.dir of llama2ft-train:
what merge, chat, web, API and eval take from `run=`), an adapter folder, and the chat settings file
that a merged model carries."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

from omegaconf import DictConfig, OmegaConf

from llama2ft.core.errors import UserError
from llama2ft.model.rope import scaling_of

# Written by llama2ft-merge beside a published model: its template and system prompt, so that chat, web,
# API and eval render prompts the way the model was trained without being told.
CHAT_META_FILE = "llama2ft.json"


@dataclass
class RunFolder:
    path: Path
    cfg: DictConfig  # the run's resolved config.yaml
    adapter: Optional[Path]  # adapter/ of a LoRA run
    model: Optional[Path]  # model/ of a full fine-tune (lora=full)
    tokenizer: Path

    @property
    def tiny(self) -> bool:
        """Trained on the embedded random-init model, saved in the run's base_model/."""
        return self.cfg.model.name_or_path is None

    @property
    def base(self) -> str:
        """What the adapter was trained on: a folder or hub id, or the run's base_model/."""
        return str(self.path / "base_model") if self.tiny else str(self.cfg.model.name_or_path)

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
    return (Path(path).expanduser() / "config.yaml").is_file()


def read_run(path: Union[str, Path]) -> RunFolder:
    """The parts of a finished run; a folder that is no run, or an unfinished one, is one UserError."""
    run = Path(path).expanduser()
    if not is_run_folder(run):
        raise UserError(f"{run} is not a training run folder (no config.yaml); pass run=<hydra.run.dir of llama2ft-train>")
    adapter = run / "adapter" if (run / "adapter").is_dir() else None
    model = run / "model" if (run / "model").is_dir() else None
    if adapter is None and model is None:
        raise UserError(f"{run} has no adapter/ folder (nor model/): the run is unfinished or failed")
    tokenizer = run / "tokenizer" if (run / "tokenizer").is_dir() else (adapter or model)
    return RunFolder(run, OmegaConf.load(run / "config.yaml"), adapter, model, tokenizer)


def check_adapter(path: Union[str, Path]) -> None:
    if not (Path(path) / "adapter_config.json").is_file():
        raise UserError(f"{path} is not a peft adapter folder (no adapter_config.json)")


def tokenizer_source(adapter: Optional[Union[str, Path]], base: Union[str, Path]) -> str:
    """An adapter's own tokenizer (saved by training) if it has one, else the base model's."""
    if adapter is not None and (Path(adapter) / "tokenizer_config.json").is_file():
        return str(adapter)
    return str(base)


def write_chat_meta(folder: Path, template: str, system: Optional[str]) -> None:
    meta = {"template": template, "system": system}
    (folder / CHAT_META_FILE).write_text(json.dumps(meta, ensure_ascii=False, indent=2), encoding="utf-8")


def read_chat_meta(folder: Path) -> dict:
    """The template and system prompt a merged folder was published with ({} for other folders)."""
    path = folder / CHAT_META_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
