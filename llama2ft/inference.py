"""Load a model to talk to: a training run, a merged (or any) model folder, or a base plus an adapter.

A run brings its base, adapter, tokenizer, template and quantization; for a folder written by
`llama2ft-merge` the template comes from its `llama2ft.json`; explicit keys win over both.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch

from llama2ft.errors import UserError, first_line
from llama2ft.generation import ChatModel
from llama2ft.modeling import compute_dtype, open_tokenizer, quantization_config
from llama2ft.runs import check_adapter, is_run_folder, read_run, tokenizer_source
from llama2ft.templates import CHAT_META_FILE, TEMPLATE_NAMES, get_template

QUANT_MODES = ("none", "int8", "nf4")


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
        if self.dtype not in ("auto", "float32", "bfloat16", "float16"):
            p.append(f"{prefix}dtype={self.dtype!r}: must be auto, float32, bfloat16 or float16")
        if self.device not in ("auto", "cpu", "cuda"):
            p.append(f"{prefix}device={self.device!r}: must be auto, cpu or cuda")
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


def resolve(spec: ModelSpec) -> Resolved:
    """Where each part comes from; checks that folders exist before anything is loaded."""
    if spec.run is not None:
        run = read_run(spec.run)
        adapter = str(run.adapter) if run.adapter is not None else None
        base = run.base if adapter is not None else str(run.model)
        return Resolved(base, adapter, spec.tokenizer or str(run.tokenizer), spec.template or run.template,
                        spec.system if spec.system is not None else run.system, spec.quant or run.quant,
                        spec.name or run.path.name)
    base = str(spec.name_or_path)
    local = Path(base).expanduser()
    if base.startswith((".", "/", "~")) and not local.exists():
        raise UserError(f"model folder {base} not found")
    meta = json.loads((local / CHAT_META_FILE).read_text(encoding="utf-8")) if (local / CHAT_META_FILE).is_file() else {}
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
    from transformers import AutoModelForCausalLM

    problems = spec.problems()
    if problems:
        raise UserError("; ".join(problems))
    r = resolve(spec)
    tok = open_tokenizer(r.tokenizer, spec.revision, spec.trust_remote_code, need_bos_eos=True)
    device = _device(spec)
    dtype = getattr(torch, spec.dtype) if spec.dtype != "auto" else compute_dtype("auto", use_cpu=device == "cpu")
    kwargs: dict[str, Any] = {"dtype": dtype, "revision": spec.revision, "trust_remote_code": spec.trust_remote_code}
    qconfig = quantization_config(r.quant, dtype)
    if qconfig is not None:
        kwargs["quantization_config"] = qconfig
        if device == "cuda":
            kwargs["device_map"] = {"": 0}  # bitsandbytes places the weights while loading
    try:
        model = AutoModelForCausalLM.from_pretrained(r.base, **kwargs)
    except (OSError, ValueError) as exc:
        raise UserError(f"could not load the model from {r.base!r}: {first_line(exc)}") from exc
    if qconfig is None:
        model.to(device)
    if r.adapter is not None:
        model = _with_adapter(model, r.adapter, r.base)
    model.eval()
    model.generation_config.use_cache = True
    context = int(getattr(model.config, "max_position_embeddings", 0) or 4096)
    return ChatModel(model, tok, get_template(r.template, r.system), context, r.label)


def _adapter_vocab_rows(adapter: str) -> Optional[int]:
    """Rows of the embedding matrix an adapter saved in full (modules_to_save), e.g. after training with
    an extended tokenizer; None when it saved none."""
    from safetensors import safe_open

    path = Path(adapter) / "adapter_model.safetensors"
    if not path.is_file():
        return None
    with safe_open(str(path), framework="pt") as f:
        for key in f.keys():
            if "embed_tokens" in key and "lora_" not in key:
                return int(f.get_slice(key).get_shape()[0])
    return None


def _with_adapter(model: Any, adapter: str, base: str) -> Any:
    from peft import PeftModel

    rows = _adapter_vocab_rows(adapter)
    if rows is not None and rows != model.get_input_embeddings().weight.shape[0]:
        model.resize_token_embeddings(rows)  # the adapter was trained with an extended tokenizer
    try:
        return PeftModel.from_pretrained(model, adapter)
    except (RuntimeError, ValueError, KeyError) as exc:
        raise UserError(f"adapter {adapter} does not fit the base model {base}: {first_line(exc)}") from exc

