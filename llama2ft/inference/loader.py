"""Load a model to talk to: a training run, a merged (or any) model folder, or a base plus an adapter.

A run brings its base, adapter, tokenizer, template and quantization; for a folder written by
`llama2ft-merge` the template comes from its `llama2ft.json`; explicit keys win over both.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from llama2ft.core.errors import UserError
from llama2ft.core.files import is_local_path
from llama2ft.data.templates import TEMPLATE_NAMES, get_template
from llama2ft.inference.engine import ChatModel
from llama2ft.model.cpu_linear import CPU_LINEAR, onednn_works, pack_for_cpu
from llama2ft.model.loading import (DEVICES, DTYPE_CHOICES, QUANT_MODES, compute_dtype, context_length, load_model,
                                    open_tokenizer, quantization_config)
from llama2ft.model.lora import load_adapter
from llama2ft.model.run_folder import check_adapter, is_run_folder, read_chat_meta, read_run, tokenizer_source


@dataclass
class ModelSpec:
    """What to load; None means "take it from the run / folder, else the default"."""

    run: Optional[str] = None
    name_or_path: Optional[str] = None
    adapter: Optional[str] = None
    tokenizer: Optional[str] = None
    template: Optional[str] = None
    system: Optional[str] = None
    quant: Optional[str] = None
    dtype: str = "auto"
    device: str = "auto"
    cpu_linear: str = "auto"  # CPU matrix products: auto | onednn | torch (llama2ft/model/cpu_linear.py)
    revision: Optional[str] = None
    trust_remote_code: bool = False
    name: Optional[str] = None  # display name

    def problems(self, prefix: str = "") -> list[str]:
        p = []
        if self.run is None and self.name_or_path is None:
            p.append(f"{prefix}run=RUN_DIR or {prefix}model.name_or_path=PATH (or model=<preset>) is required")
        if self.run is not None and self.name_or_path is not None:
            p.append(f"{prefix}run= already names the model; do not combine it with model.name_or_path")
        if self.run is not None and not is_run_folder(self.run):
            p.append(f"{prefix}run={self.run}: not a training run folder (no config.yaml)")
        if self.run is not None and self.adapter is not None:
            p.append(f"{prefix}run= already names the adapter; do not combine it with adapter=")
        if self.template is not None and self.template not in TEMPLATE_NAMES:
            p.append(f"{prefix}template={self.template!r}: must be one of {', '.join(TEMPLATE_NAMES)}")
        if self.quant is not None and self.quant not in QUANT_MODES:
            p.append(f"{prefix}quant={self.quant!r}: must be one of {', '.join(QUANT_MODES)}")
        if self.dtype not in DTYPE_CHOICES:
            p.append(f"{prefix}dtype={self.dtype!r}: must be one of {', '.join(DTYPE_CHOICES)}")
        if self.device not in DEVICES:
            p.append(f"{prefix}device={self.device!r}: must be one of {', '.join(DEVICES)}")
        if self.cpu_linear not in CPU_LINEAR:
            p.append(f"{prefix}cpu_linear={self.cpu_linear!r}: must be one of {', '.join(CPU_LINEAR)}")
        return p


@dataclass
class Resolved:
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
        return Resolved(base, adapter, spec.tokenizer or str(run.tokenizer), spec.template or run.template,
                        spec.system if spec.system is not None else run.system, spec.quant or run.quant,
                        spec.name or run.path.name, run.rope_scaling if adapter is not None else None)
    base = str(spec.name_or_path)
    local = Path(base).expanduser()
    if is_local_path(base) and not local.exists():
        raise UserError(f"model folder {base} not found")
    meta = read_chat_meta(local)
    if spec.adapter is not None:
        check_adapter(spec.adapter)
    return Resolved(base, spec.adapter, spec.tokenizer or tokenizer_source(spec.adapter, base),
                    spec.template or meta.get("template", "human_assistant"),
                    spec.system if spec.system is not None else meta.get("system"), spec.quant or "none",
                    spec.name or local.name)


def _device(spec: ModelSpec) -> str:
    if spec.device == "cuda" and not torch.cuda.is_available():
        raise UserError("device=cuda but no CUDA GPU is available")
    if spec.device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return spec.device


def load_chat_model(spec: ModelSpec) -> ChatModel:
    """Resolve and load; every failure is one UserError naming what could not be loaded."""
    problems = spec.problems()
    if problems:
        raise UserError("; ".join(problems))
    r = resolve(spec)
    tok = open_tokenizer(r.tokenizer, spec.revision, spec.trust_remote_code, need_bos_eos=True)
    device = _device(spec)
    dtype = getattr(torch, spec.dtype) if spec.dtype != "auto" else compute_dtype("auto", use_cpu=device == "cpu")
    if spec.cpu_linear == "onednn":
        _check_onednn(device, dtype, r.quant)
    model = load_model(r.base, dtype, quant=quantization_config(r.quant, dtype), device=device,
                       revision=spec.revision, trust_remote_code=spec.trust_remote_code, rope_scaling=r.rope_scaling)
    if r.adapter is not None:
        model = load_adapter(model, r.adapter, r.base)
    model.eval()
    model.generation_config.use_cache = True
    pack_for_cpu(model, spec.cpu_linear)
    return ChatModel(model, tok, get_template(r.template, r.system), context_length(model), r.label)


def _check_onednn(device: str, dtype: torch.dtype, quant: str) -> None:
    """cpu_linear=onednn asked for explicitly: fail before loading where it cannot apply."""
    if device != "cpu":
        raise UserError(f"cpu_linear=onednn is for CPU inference; this model loads on {device} (use cpu_linear=auto)")
    if quant != "none":
        raise UserError(f"cpu_linear=onednn packs full-precision weights; quant={quant} layers stay as they are "
                        "(use cpu_linear=auto)")
    if not onednn_works(dtype):
        raise UserError(f"cpu_linear=onednn: this PyTorch build cannot run oneDNN {str(dtype)[6:]} matrix products "
                        "here (use cpu_linear=auto or torch)")


def load_vllm(spec: ModelSpec, max_batch: int) -> ChatModel:
    """The same model under vLLM (`engine=vllm`): the same tokenizer and template render the prompts."""
    from transformers import AutoConfig

    from llama2ft.inference.vllm_engine import load_vllm_chat_model, require_vllm

    require_vllm()
    problems = spec.problems()
    if problems:
        raise UserError("; ".join(problems))
    r = resolve(spec)
    if r.quant != "none":
        raise UserError(f"engine=vllm serves full-precision weights; quant={r.quant} is for engine=transformers")
    tok = open_tokenizer(r.tokenizer, spec.revision, spec.trust_remote_code, need_bos_eos=True)
    config = AutoConfig.from_pretrained(r.base, revision=spec.revision, trust_remote_code=spec.trust_remote_code)
    return load_vllm_chat_model(r.base, tok, r.tokenizer, r.adapter, get_template(r.template, r.system),
                                context_length(config), r.label, max_batch,
                                spec.dtype, spec.revision, spec.trust_remote_code)
