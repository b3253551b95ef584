"""Value checks of the training config, collected and reported all at once before anything heavy
is loaded (the allowed values come from the layers that own them)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import torch
from omegaconf import DictConfig

from llama2ft.config.variants import variant_problems
from llama2ft.core.errors import ConfigError
from llama2ft.core.files import is_local_path
from llama2ft.data.mixing import input_problems
from llama2ft.data.splits import PREVIEW_KEPT
from llama2ft.data.shapes import FORMATS
from llama2ft.data.templates import TEMPLATE_NAMES
from llama2ft.model.kernels import kernel_problems
from llama2ft.model.loading import DTYPE_CHOICES, DTYPES, PRECISIONS, QUANT_MODES
from llama2ft.model.memory import CHECKPOINTING, checkpointing_setting

REPORT_TO = ("wandb", "tensorboard")
WANDB_MODES = ("offline", "online", "disabled")


def _one_of(problems: list[str], key: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        problems.append(f"{key}={value!r}: must be one of {', '.join(allowed)}")


def collect_problems(cfg: DictConfig) -> list[str]:
    """Every value problem in a composed training config (an empty list when it is valid)."""
    p: list[str] = []
    m, lora, q, d, t, tr = cfg.model, cfg.lora, cfg.quant, cfg.data, cfg.template, cfg.trainer
    if m.name_or_path is None and m.init is None:
        p.append("model.name_or_path: set a local folder or hub id (or model=tiny for the embedded model)")
    if m.name_or_path is not None and is_local_path(m.name_or_path) and not Path(m.name_or_path).expanduser().exists():
        p.append(f"model.name_or_path={m.name_or_path!r}: folder not found")
    _one_of(p, "model.dtype", m.dtype, DTYPE_CHOICES)
    _one_of(p, "model.resize_init", m.resize_init, ("mean", "normal"))
    if m.init is not None:
        for key in ("hidden_size", "intermediate_size"):
            if m.init[key] <= 0 or m.init[key] % 32:
                p.append(f"model.init.{key}={m.init[key]}: must be a positive multiple of 32")
        if m.init.num_attention_heads <= 0 or m.init.hidden_size % m.init.num_attention_heads:
            p.append("model.init.num_attention_heads: must divide model.init.hidden_size")
        elif m.init.num_key_value_heads <= 0 or m.init.num_attention_heads % m.init.num_key_value_heads:
            p.append("model.init.num_key_value_heads: must divide model.init.num_attention_heads")
    if lora.enabled:
        if lora.r <= 0:
            p.append(f"lora.r={lora.r}: must be > 0")
        if lora.alpha <= 0:
            p.append(f"lora.alpha={lora.alpha}: must be > 0")
        if not 0 <= lora.dropout < 1:
            p.append(f"lora.dropout={lora.dropout}: must be in [0, 1)")
        if not lora.target_modules:
            p.append("lora.target_modules: must name at least one module")
    _one_of(p, "quant.mode", q.mode, QUANT_MODES)
    _one_of(p, "quant.compute_dtype", q.compute_dtype, ("auto", *DTYPES))
    if q.mode != "none" and not lora.enabled:
        p.append(f"quant={q.mode} with lora=full: a quantized model cannot be fully fine-tuned; use a LoRA adapter")
    p += input_problems(d)  # data files (csv, json, jsonl, parquet, dataset folders) and their weights
    if not 0 <= d.eval_fraction < 1:
        p.append(f"data.eval_fraction={d.eval_fraction}: must be in [0, 1)")
    if d.max_seq_len < 16:
        p.append(f"data.max_seq_len={d.max_seq_len}: must be >= 16")
    _one_of(p, "data.format", d.format, FORMATS)
    if not 0 <= d.preview_rows <= PREVIEW_KEPT:
        p.append(f"data.preview_rows={d.preview_rows}: must be in [0, {PREVIEW_KEPT}]")
    if not d.text_column:
        p.append("data.text_column: must not be empty")
    _one_of(p, "template.name", t.name, TEMPLATE_NAMES)
    if tr.learning_rate <= 0:
        p.append(f"trainer.learning_rate={tr.learning_rate}: must be > 0")
    if tr.max_steps <= 0 and tr.num_train_epochs <= 0:
        p.append("trainer.num_train_epochs: must be > 0 (or set trainer.max_steps)")
    for key in ("per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps",
                "logging_steps", "eval_steps", "save_steps"):
        if tr[key] <= 0:
            p.append(f"trainer.{key}={tr[key]}: must be > 0")
    if tr.save_total_limit is not None and tr.save_total_limit < 1:
        p.append(f"trainer.save_total_limit={tr.save_total_limit}: must be >= 1 (or null: keep every checkpoint)")
    if not 0 <= tr.warmup_ratio < 1:
        p.append(f"trainer.warmup_ratio={tr.warmup_ratio}: must be in [0, 1)")
    _one_of(p, "trainer.precision", tr.precision, PRECISIONS)
    _one_of(p, "trainer.gradient_checkpointing", checkpointing_setting(tr.gradient_checkpointing), CHECKPOINTING)
    p += kernel_problems(tr.kernels, not tr.use_cpu and torch.cuda.is_available())
    for name in cfg.logger.report_to:
        _one_of(p, "logger.report_to", name, REPORT_TO)
    _one_of(p, "logger.wandb_mode", cfg.logger.wandb_mode, WANDB_MODES)
    p += variant_problems(cfg)  # LoRA variants, LoRA+, NEFTune, RoPE scaling and context length
    return p


def validate(cfg: DictConfig, extra: Optional[list[str]] = None) -> None:
    """Raise one ConfigError listing every problem (`extra`: those the caller found, e.g. the method's)."""
    problems = collect_problems(cfg) + list(extra or [])
    if problems:
        raise ConfigError(problems)
