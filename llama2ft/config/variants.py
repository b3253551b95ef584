"""Value checks of the training options other frameworks expose in one line: the LoRA variants (DoRA,
rsLoRA, initialisations, LoRA+), NEFTune and RoPE scaling with the context length it allows. Part of
`validation.collect_problems`: reported with the other config errors before any model loads."""
from __future__ import annotations

from typing import Any, Optional

from omegaconf import DictConfig

from llama2ft.model.lora import BASE_CHANGING_INITS, LORA_INITS
from llama2ft.model.rope import ROPE_TYPES, base_positions, scaled_positions, scaling_of


def lora_variant_problems(lora: Any, quant_mode: str, trainer: Any) -> list[str]:
    p: list[str] = []
    if lora.init not in LORA_INITS:
        p.append(f"lora.init={lora.init!r}: must be one of {', '.join(LORA_INITS)}")
    elif lora.enabled and lora.init in BASE_CHANGING_INITS:
        if quant_mode != "none":
            # peft factorises the base in float and re-quantizes the residual: the saved adapter, converted
            # to fit the original base, would no longer fit the quantized one it was trained on
            p.append(f"lora.init={lora.init} with quant={quant_mode}: {lora.init} rewrites the base weights, which "
                     "needs a float base; use quant=none, or lora.init=default/gaussian for QLoRA")
        if lora.use_dora:
            p.append(f"lora.init={lora.init} with lora.use_dora=true: the saved adapter cannot be converted "
                     "back to the original base; choose one of them")
    if not lora.enabled:
        on = [k for k in ("use_dora", "use_rslora") if lora[k]] + (["init"] if lora.init != "default" else [])
        if on:
            p.append(f"{', '.join(f'lora.{k}' for k in on)}: need a LoRA adapter, but lora.enabled=false (lora=full)")
        if trainer.loraplus_lr_ratio is not None:
            p.append("trainer.loraplus_lr_ratio: needs a LoRA adapter, but lora.enabled=false (lora=full)")
    if trainer.loraplus_lr_ratio is not None and trainer.loraplus_lr_ratio < 1:
        p.append(f"trainer.loraplus_lr_ratio={trainer.loraplus_lr_ratio}: must be >= 1 (B learns that many times "
                 "faster than A)")
    if trainer.neftune_noise_alpha is not None and trainer.neftune_noise_alpha <= 0:
        p.append(f"trainer.neftune_noise_alpha={trainer.neftune_noise_alpha}: must be > 0 (or null for no noise)")
    return p


def model_positions(model: Any) -> Optional[int]:
    """The base's max_position_embeddings, read without loading it (None when unknown here)."""
    if model.name_or_path is None:
        return int(model.init.max_position_embeddings) if model.init is not None else None
    return base_positions(model.name_or_path, model.get("revision"))


def context_problems(cfg: DictConfig) -> list[str]:
    """RoPE scaling values, and data.max_seq_len against the positions the (scaled) model covers."""
    p: list[str] = []
    scaling = scaling_of(cfg.model.rope_scaling)
    if scaling is not None:
        if scaling["rope_type"] not in ROPE_TYPES:
            p.append(f"model.rope_scaling.rope_type={scaling['rope_type']!r}: must be one of {', '.join(ROPE_TYPES)}")
        if not scaling["factor"] > 1:
            p.append(f"model.rope_scaling.factor={scaling['factor']}: must be > 1 (the context grows by it)")
        if p:
            return p
    positions = model_positions(cfg.model)
    if positions is None:
        return p
    limit = scaled_positions(positions, scaling)
    if cfg.data.max_seq_len > limit:
        if scaling is None:
            p.append(f"data.max_seq_len={cfg.data.max_seq_len} exceeds the model's {positions} positions "
                     f"(max_position_embeddings): set model.rope_scaling={{rope_type: linear, factor: "
                     f"{-(-cfg.data.max_seq_len // positions)}}} or a smaller data.max_seq_len")
        else:
            p.append(f"data.max_seq_len={cfg.data.max_seq_len} exceeds the {limit} positions of the model's "
                     f"{positions} x model.rope_scaling.factor={scaling['factor']}: raise the factor or lower "
                     "data.max_seq_len")
    return p


def variant_problems(cfg: DictConfig) -> list[str]:
    """Every problem of these options in a composed training config."""
    return lora_variant_problems(cfg.lora, cfg.quant.mode, cfg.trainer) + context_problems(cfg)
