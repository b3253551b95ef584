"""Tokenizer and model loading: any local folder or hub id, the embedded tiny model, bitsandbytes
quantization and the peft LoRA adapter."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Optional

import torch
from omegaconf import DictConfig

from llama2ft.errors import UserError, first_line

log = logging.getLogger(__name__)


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


def load_tokenizer(model_cfg: DictConfig) -> Any:
    """The training tokenizer named by model.tokenizer (default model.name_or_path)."""
    source = model_cfg.tokenizer or model_cfg.name_or_path
    tok = open_tokenizer(source, model_cfg.revision, model_cfg.trust_remote_code, need_bos_eos=True)
    tok.padding_side = "right"
    return tok


def compute_dtype(precision: str, use_cpu: bool) -> torch.dtype:
    """The dtype that `trainer.precision` stands for on this hardware."""
    if precision == "fp32":
        return torch.float32
    if precision == "bf16":
        return torch.bfloat16
    if precision == "fp16":
        return torch.float16
    if use_cpu or not torch.cuda.is_available():
        return torch.float32
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def build_tiny_base(model_cfg: DictConfig, tokenizer: Any, out_dir: Path) -> str:
    """Build the seeded random-init Llama of `model.init` and save it, so that adapters trained on it
    load with stock peft (their base_model_name_or_path is this folder)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    init = model_cfg.init
    vocab = len(tokenizer)
    config = LlamaConfig(
        vocab_size=vocab + (-vocab % 32),  # bitsandbytes' CPU 4-bit kernels want widths in multiples of 32
        hidden_size=init.hidden_size,
        intermediate_size=init.intermediate_size,
        num_hidden_layers=init.num_hidden_layers,
        num_attention_heads=init.num_attention_heads,
        num_key_value_heads=init.num_key_value_heads,
        max_position_embeddings=init.max_position_embeddings,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(init.seed)
    model = LlamaForCausalLM(config)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return str(out_dir)


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


def load_model(cfg: DictConfig, base_path: str, dtype: torch.dtype) -> Any:
    """The base model from `base_path`, quantized as `quant` says, in `dtype` otherwise."""
    from transformers import AutoModelForCausalLM

    kwargs: dict[str, Any] = {"revision": cfg.model.revision, "trust_remote_code": cfg.model.trust_remote_code}
    if cfg.model.dtype != "auto":
        dtype = getattr(torch, cfg.model.dtype)
    kwargs["dtype"] = dtype
    if cfg.model.attn_implementation:
        kwargs["attn_implementation"] = cfg.model.attn_implementation
    elif cfg.data.packing:
        from llama2ft.attention import packed_attention

        kwargs["attn_implementation"] = packed_attention(torch.cuda.is_available() and not cfg.trainer.use_cpu)
    qconfig = quantization_config(cfg.quant.mode, dtype, cfg.quant.double_quant, cfg.quant.compute_dtype)
    if qconfig is not None:
        kwargs["quantization_config"] = qconfig
        if torch.cuda.is_available() and not cfg.trainer.use_cpu:
            from accelerate import PartialState

            kwargs["device_map"] = {"": PartialState().local_process_index}
    try:
        model = AutoModelForCausalLM.from_pretrained(base_path, **kwargs)
    except (OSError, ValueError) as exc:
        raise UserError(f"could not load the model from {base_path!r}: {first_line(exc)}") from exc
    model.config.use_cache = False  # the KV cache is useless in training and clashes with checkpointing
    if qconfig is not None:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=cfg.trainer.gradient_checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False})
    return model


def resize_embeddings(model: Any, vocab: int, init: str) -> Optional[tuple[int, int]]:
    """Grow the embeddings and output head to hold `vocab` tokens (an extended tokenizer), rounded up
    to a multiple of 32 like build_tiny_base. init="mean": new rows are the mean of the old rows
    (transformers' mean_resizing, which adds noise of 1e-9 x their covariance), so a new token starts
    with an average embedding and an average logit and the loss does not jump; "normal": the model's
    own random init. Returns (old rows, new rows), or None when the model is already large enough."""
    from transformers import set_seed

    rows = model.get_input_embeddings().weight.shape[0]
    if vocab <= rows:
        return None
    set_seed(0)  # "mean" samples its (tiny) noise, "normal" its rows: reproducible either way
    model.resize_token_embeddings(vocab, pad_to_multiple_of=32, mean_resizing=init == "mean")
    return rows, model.get_input_embeddings().weight.shape[0]


def embedding_module_names(model: Any) -> list[str]:
    """Names (as peft's modules_to_save wants them) of the input embeddings and the output head."""
    wanted = [m for m in (model.get_input_embeddings(), model.get_output_embeddings()) if m is not None]
    return [name.rsplit(".", 1)[-1] for name, module in model.named_modules() if any(module is m for m in wanted)]


def apply_lora(model: Any, cfg: DictConfig, also_save: list[str] | tuple[str, ...] = ()) -> Any:
    """Wrap `model` in a peft LoRA adapter (seeded: LoRA's A matrices are drawn here); `also_save`
    modules train in full besides lora.modules_to_save (e.g. resized embeddings)."""
    from peft import LoraConfig, get_peft_model
    from transformers import set_seed

    set_seed(cfg.trainer.seed)
    lora = cfg.lora
    to_save = list(dict.fromkeys([*lora.modules_to_save, *also_save]))
    config = LoraConfig(
        r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=list(lora.target_modules),
        modules_to_save=to_save or None, task_type="CAUSAL_LM", bias="none")
    try:
        return get_peft_model(model, config)
    except ValueError as exc:
        raise UserError(f"lora.target_modules={list(lora.target_modules)}: {first_line(exc)}") from exc


def count_parameters(model: Any) -> tuple[int, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total
