"""Loading tokenizers and models, for training and for inference alike: any local folder or hub id,
bitsandbytes quantization, the dtype a precision setting stands for, and the allowed values of these."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional, Union

import torch

from llama2ft.core.errors import UserError, first_line
from llama2ft.model.rope import apply_rope_scaling, scaled_positions

DTYPES = ("float32", "bfloat16", "float16")
DTYPE_CHOICES = ("auto", *DTYPES)  # auto: bfloat16/float16 on a GPU, float32 on CPU
QUANT_MODES = ("none", "int8", "nf4")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
DEVICES = ("auto", "cpu", "cuda")
FALLBACK_CONTEXT = 4096  # Llama-2's context, for a config that does not say


def open_tokenizer(source: str, revision: Optional[str] = None, trust_remote_code: bool = False,
                   need_bos_eos: bool = False) -> Any:
    """A tokenizer from a folder or hub id, with a pad token set; a failure is one clear UserError.
    `need_bos_eos`: the templates put BOS/EOS around every turn, so training and chat require them."""
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(source, revision=revision, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        raise UserError(f"could not load the tokenizer from {source!r}: {first_line(exc)}") from exc
    if need_bos_eos and (tok.bos_token_id is None or tok.eos_token_id is None):
        raise UserError(f"the tokenizer from {source!r} has no BOS/EOS token; Llama tokenizers have <s> and </s>")
    if tok.pad_token_id is None:
        # Llama-2 has no pad token; <unk> never appears in training labels, so padding with it is harmless.
        tok.pad_token = tok.unk_token if tok.unk_token is not None else tok.eos_token
    return tok


def load_tokenizer(model_cfg: Any) -> Any:
    """The training tokenizer named by the model node: model.tokenizer, else model.name_or_path."""
    source = model_cfg.tokenizer or model_cfg.name_or_path
    tok = open_tokenizer(source, model_cfg.revision, model_cfg.trust_remote_code, need_bos_eos=True)
    tok.padding_side = "right"
    return tok


# A text whose tokens show whether `▁` is put in front of the text after each special token.
_PROBE = "<s>Human: 你好\n</s><s>Assistant: Hello 12"


def save_tokenizer(tok: Any, folder: Union[str, Path]) -> None:
    """`tok.save_pretrained(folder)`, keeping the tokenizer's behaviour: transformers 5 saves a Llama
    tokenizer loaded with `legacy: true` without that key, and the saved folder then reloads with
    another pre-tokenizer (no `▁` after special tokens: `<s>Human` becomes `H`, `uman`). The folder is
    reloaded and checked to tokenize as `tok` does."""
    from transformers import AutoTokenizer

    tok.save_pretrained(str(folder))
    legacy = getattr(tok, "legacy", None)
    config = Path(folder) / "tokenizer_config.json"
    if legacy is not None and config.is_file():
        settings = json.loads(config.read_text(encoding="utf-8"))
        if settings.get("legacy") != legacy:
            settings["legacy"] = legacy
            config.write_text(json.dumps(settings, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    probe = _PROBE.replace("<s>", tok.bos_token or "").replace("</s>", tok.eos_token or "")
    again = AutoTokenizer.from_pretrained(str(folder))
    if again(probe, add_special_tokens=False)["input_ids"] != tok(probe, add_special_tokens=False)["input_ids"]:
        raise RuntimeError(f"the tokenizer saved in {folder} does not tokenize as the one it was saved from")


def compute_dtype(precision: str, use_cpu: bool) -> torch.dtype:
    """The dtype that a precision setting (trainer.precision) stands for on this hardware."""
    if precision == "fp32":
        return torch.float32
    if precision == "bf16":
        return torch.bfloat16
    if precision == "fp16":
        return torch.float16
    if use_cpu or not torch.cuda.is_available():
        return torch.float32
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def quantization_config(mode: str, dtype: torch.dtype, double_quant: bool = True,
                        compute_dtype: str = "auto") -> Optional[Any]:
    """bitsandbytes settings for quant.mode none | int8 | nf4 (QLoRA: NF4, computing in `dtype` unless
    `compute_dtype` names one)."""
    if mode == "none":
        return None
    from transformers import BitsAndBytesConfig

    if mode == "int8":
        return BitsAndBytesConfig(load_in_8bit=True)
    compute = dtype if compute_dtype == "auto" else getattr(torch, compute_dtype)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                              bnb_4bit_use_double_quant=double_quant, bnb_4bit_compute_dtype=compute)


def load_model(path: str, dtype: torch.dtype, *, quant: Optional[Any] = None, device: Optional[str] = None,
               revision: Optional[str] = None, trust_remote_code: bool = False,
               attn_implementation: Optional[str] = None, rope_scaling: Optional[Any] = None,
               scorer: bool = False) -> Any:
    """A causal LM from a folder or hub id in `dtype`, quantized by `quant` (a `quantization_config`),
    with `rope_scaling` ({rope_type, factor}, see model/rope.py) set on its config.
    `device` (e.g. "cpu", "cuda:1"): where the weights go; bitsandbytes places quantized weights while
    loading. None leaves them where transformers loads them (the Trainer or accelerate moves them).
    `scorer`: a sequence-classification model with one output (a reward model) instead; from a causal LM's
    folder its `score` head starts random (transformers says so) and the LM head is left out."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    kwargs: dict[str, Any] = {"dtype": dtype, "revision": revision, "trust_remote_code": trust_remote_code}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    if quant is not None:
        kwargs["quantization_config"] = quant
        if device is not None and device.startswith("cuda"):
            kwargs["device_map"] = {"": torch.device(device).index or 0}
    try:
        if rope_scaling:
            from transformers import AutoConfig

            config = AutoConfig.from_pretrained(path, revision=revision, trust_remote_code=trust_remote_code)
            kwargs["config"] = apply_rope_scaling(config, rope_scaling)
        if scorer and "config" in kwargs:
            kwargs["config"].num_labels = 1
        elif scorer:
            kwargs["num_labels"] = 1
        model = (AutoModelForSequenceClassification if scorer else AutoModelForCausalLM).from_pretrained(path, **kwargs)
    except (OSError, ValueError) as exc:
        raise UserError(f"could not load the model from {path!r}: {first_line(exc)}") from exc
    if quant is None and device is not None:
        model.to(device)
    return model


def context_length(model: Any) -> int:
    """How many positions the model (or a model config) was built for (dynamic NTK scaling keeps the
    original length in max_position_embeddings: it covers `factor` times more)."""
    config = getattr(model, "config", model)
    positions = int(getattr(config, "max_position_embeddings", 0) or FALLBACK_CONTEXT)
    rope = getattr(config, "rope_parameters", None) or {}
    return scaled_positions(positions, rope) if rope.get("rope_type") == "dynamic" else positions


def quantized_layers(model: Any) -> dict[str, int]:
    """How many layers of each bitsandbytes kind (Linear4bit, Linear8bitLt) the model holds: proof that
    quantization took effect rather than silently falling back to full precision."""
    counts: dict[str, int] = {}
    for module in model.modules():
        kind = type(module)
        if kind.__module__.startswith("bitsandbytes"):
            counts[kind.__name__] = counts.get(kind.__name__, 0) + 1
    return counts


def count_parameters(model: Any) -> tuple[int, int]:
    """(trainable, total) parameters."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total
