"""Load a model to talk to (a `ModelSpec`: a training run, a merged or any model folder, or a base plus an
adapter) under transformers, or under vLLM for `engine=vllm`."""
from __future__ import annotations

import torch

from llama2ft.core.errors import UserError
from llama2ft.data.templates import get_template
from llama2ft.inference.engine import ChatModel
from llama2ft.inference.model_choice import ModelSpec, Resolved, resolve
from llama2ft.model.cpu_linear import onednn_works, pack_for_cpu
from llama2ft.model.loading import compute_dtype, context_length, load_model, open_tokenizer, quantization_config
from llama2ft.model.lora import load_adapter
from llama2ft.model.run_folder import holds_scorer


def _device(spec: ModelSpec) -> str:
    if spec.device == "cuda" and not torch.cuda.is_available():
        raise UserError("device=cuda but no CUDA GPU is available")
    if spec.device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return spec.device


def checked_resolve(spec: ModelSpec) -> Resolved:
    """Where each part of the spec comes from, refusing a reward model (it scores answers, writes none)."""
    problems = spec.problems()
    if problems:
        raise UserError("; ".join(problems))
    r = resolve(spec)
    for path in (spec.run, r.base):
        if path is not None and holds_scorer(path):
            raise UserError(f"{path} is a reward model (method=rm): it scores answers and writes none; talk to a "
                            "causal LM's run or folder (a reward model scores through llama2ft.training.reward_model)")
    return r


def load_chat_model(spec: ModelSpec) -> ChatModel:
    """Resolve and load; every failure is one UserError naming what could not be loaded."""
    r = checked_resolve(spec)
    source = spec.model
    tok = open_tokenizer(r.tokenizer, source.revision, source.trust_remote_code, need_bos_eos=True)
    device = _device(spec)
    dtype = getattr(torch, source.dtype) if source.dtype != "auto" else compute_dtype("auto", use_cpu=device == "cpu")
    if spec.cpu_linear == "onednn":
        _check_onednn(device, dtype, r.quant)
    model = load_model(r.base, dtype, quant=quantization_config(r.quant, dtype), device=device,
                       revision=source.revision, trust_remote_code=source.trust_remote_code,
                       rope_scaling=r.rope_scaling)
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
    r = checked_resolve(spec)
    if r.quant != "none":
        raise UserError(f"engine=vllm serves full-precision weights; quant={r.quant} is for engine=transformers")
    source = spec.model
    tok = open_tokenizer(r.tokenizer, source.revision, source.trust_remote_code, need_bos_eos=True)
    config = AutoConfig.from_pretrained(r.base, revision=source.revision, trust_remote_code=source.trust_remote_code)
    return load_vllm_chat_model(r, source, tok, get_template(r.template, r.system), context_length(config), max_batch)
