"""Which model, which adapter, which template: stated once here (names, defaults, allowed values, checks)
for chat, web, serve, eval and the vLLM engine.

`ModelChoice` holds the keys a generation app's config sets (`run=`, `model.name_or_path=`, `adapter=`,
`system=`, `device=`, `cpu_linear=`; the apps' Hydra schemas inherit it, in config/app_schemas.py).
`ModelSpec` is what to load: those keys plus the template and quantization chosen (by name; in a config
they come from the training's `template=`/`quant=` groups) and a display name. `resolve` says where each
part comes from: a run brings its base, adapter, tokenizer, template and quantization; a folder written
by `llama2ft-merge` its template (`llama2ft.json`, or the chat_template llama2ft wrote into its tokenizer:
`carried_template`); explicit keys win over both.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from llama2ft.core.errors import UserError
from llama2ft.core.files import is_local_path
from llama2ft.data.chat_formats import template_of
from llama2ft.data.templates import TEMPLATE_NAMES
from llama2ft.model.cpu_linear import CPU_LINEAR
from llama2ft.model.loading import DEVICES, DTYPE_CHOICES, QUANT_MODES
from llama2ft.model.run_folder import check_adapter, is_run_folder, read_chat_meta, read_run, tokenizer_source


@dataclass
class ModelSource:
    """The `model` node: a folder or hub id (a merged model included) and how to open it."""

    name_or_path: Optional[str] = None
    tokenizer: Optional[str] = None  # default: the run's, the adapter's, else the model's
    revision: Optional[str] = None
    trust_remote_code: bool = False
    dtype: str = "auto"  # auto: bfloat16/float16 on GPU, float32 on CPU; see model/loading.py DTYPE_CHOICES


@dataclass
class ModelChoice:
    """The model keys of the generation apps; None means "take it from the run / folder, else the default"."""

    run: Optional[str] = None  # a training run folder: base, adapter, tokenizer, template come from it
    model: ModelSource = field(default_factory=ModelSource)
    adapter: Optional[str] = None  # a LoRA adapter folder on top of model.name_or_path
    system: Optional[str] = None  # system prompt (llama2_inst); default: the run's or the merged folder's
    device: str = "auto"  # auto | cpu | cuda
    cpu_linear: str = "auto"  # CPU matrix products: auto | onednn | torch (llama2ft/model/cpu_linear.py)


@dataclass
class ModelSpec(ModelChoice):
    """What to load: the model keys, the template and quantization by name, and a display name."""

    template: Optional[str] = None  # a name of data/templates.py TEMPLATE_NAMES
    quant: Optional[str] = None  # a mode of model/loading.py QUANT_MODES
    name: Optional[str] = None  # display name

    @classmethod
    def from_config(cls, cfg: Any) -> "ModelSpec":
        """The model a generation app's config names: its model keys, and the name and mode of the
        `template=`/`quant=` groups when chosen (their `system` is the default of `system=`)."""
        template, quant = cfg.template, cfg.quant
        system = cfg.system if cfg.system is not None else (template.system if template is not None else None)
        return cls(run=cfg.run, model=ModelSource(**cfg.model), adapter=cfg.adapter, system=system,
                   device=cfg.device, cpu_linear=cfg.cpu_linear,
                   template=template.name if template is not None else None,
                   quant=quant.mode if quant is not None else None)

    def problems(self, prefix: str = "") -> list[str]:
        p = []
        if self.run is None and self.model.name_or_path is None:
            p.append(f"{prefix}run=RUN_DIR or {prefix}model.name_or_path=PATH (or model=<preset>) is required")
        if self.run is not None and self.model.name_or_path is not None:
            p.append(f"{prefix}run= already names the model; do not combine it with model.name_or_path")
        if self.run is not None and not is_run_folder(self.run):
            p.append(f"{prefix}run={self.run}: not a training run folder (no config.yaml)")
        if self.run is not None and self.adapter is not None:
            p.append(f"{prefix}run= already names the adapter; do not combine it with adapter=")
        if self.template is not None and self.template not in TEMPLATE_NAMES:
            p.append(f"{prefix}template={self.template!r}: must be one of {', '.join(TEMPLATE_NAMES)}")
        if self.quant is not None and self.quant not in QUANT_MODES:
            p.append(f"{prefix}quant={self.quant!r}: must be one of {', '.join(QUANT_MODES)}")
        if self.model.dtype not in DTYPE_CHOICES:
            p.append(f"{prefix}model.dtype={self.model.dtype!r}: must be one of {', '.join(DTYPE_CHOICES)}")
        if self.device not in DEVICES:
            p.append(f"{prefix}device={self.device!r}: must be one of {', '.join(DEVICES)}")
        if self.cpu_linear not in CPU_LINEAR:
            p.append(f"{prefix}cpu_linear={self.cpu_linear!r}: must be one of {', '.join(CPU_LINEAR)}")
        return p


@dataclass
class Resolved:
    """Where each part of a `ModelSpec` comes from, as paths or hub ids."""

    base: str
    adapter: Optional[str]
    tokenizer: str
    template: str
    system: Optional[str]
    quant: str
    label: str
    rope_scaling: Optional[dict] = None  # a run's model.rope_scaling: its base loads as it trained


def resolve(spec: ModelSpec) -> Resolved:
    """Where each part comes from; checks that folders exist before anything is loaded."""
    if spec.run is not None:
        run = read_run(spec.run)
        adapter = str(run.adapter) if run.adapter is not None else None
        base = run.base if adapter is not None else str(run.model)
        return Resolved(base, adapter, spec.model.tokenizer or str(run.tokenizer), spec.template or run.template,
                        spec.system if spec.system is not None else run.system, spec.quant or run.quant,
                        spec.name or run.path.name, run.rope_scaling if adapter is not None else None)
    base = str(spec.model.name_or_path)
    local = Path(base).expanduser()
    if is_local_path(base) and not local.exists():
        raise UserError(f"model folder {base} not found")
    if spec.adapter is not None:
        check_adapter(spec.adapter)
    tokenizer = spec.model.tokenizer or tokenizer_source(spec.adapter, base)
    template, system = carried_template(base, tokenizer) or ("human_assistant", None)
    return Resolved(base, spec.adapter, tokenizer, spec.template or template,
                    spec.system if spec.system is not None else system, spec.quant or "none",
                    spec.name or local.name)


def carried_template(folder: str, tokenizer: str) -> Optional[tuple[str, Optional[str]]]:
    """(template, system prompt) a model folder carries: its `llama2ft.json` (written by llama2ft-merge), else
    the chat_template llama2ft wrote into its tokenizer's files; None for any other folder or a hub id (a
    plain Llama-2-Chat: its tokenizer's own chat_template is not one of ours). Reads small files only."""
    meta = read_chat_meta(Path(folder).expanduser())
    if meta:
        return meta["template"], meta.get("system")
    tok = Path(tokenizer).expanduser()
    jinja, config = tok / "chat_template.jinja", tok / "tokenizer_config.json"
    if jinja.is_file():
        return template_of(jinja.read_text(encoding="utf-8"))
    if config.is_file():
        return template_of(json.loads(config.read_text(encoding="utf-8")).get("chat_template"))
    return None
