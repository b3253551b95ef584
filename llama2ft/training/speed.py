"""What a training run does to go fast on its device, decided once and written to the run's log and
metrics: the attention implementation, Liger's fused kernels, gradient checkpointing (only when a step
would not fit), torch.compile; and the peak GPU memory the run reached."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from llama2ft.model.kernels import use_liger
from llama2ft.model.memory import (CheckpointPlan, Shape, checkpointing_setting, free_memory, lora_parameters,
                                   plan_checkpointing, weight_bytes)


@dataclass(frozen=True)
class SpeedPlan:
    attention: str
    liger: bool
    checkpointing: CheckpointPlan
    compile: bool
    device: str

    def log_lines(self) -> list[str]:
        return [f"speed: device {self.device}; attention {self.attention}; kernels "
                f"{'liger' if self.liger else 'none'}; torch.compile {'on' if self.compile else 'off'}",
                self.checkpointing.message]

    def metrics(self) -> dict[str, Any]:
        return {"attention": self.attention, "kernels": "liger" if self.liger else "none",
                "torch_compile": self.compile, **self.checkpointing.metrics()}


def plan_speed(cfg: Any, model: Any, device: torch.device) -> SpeedPlan:
    """The speed settings of a training run (`cfg`: the validated training config) for `model`, loaded
    but not yet wrapped by peft; `device`: where it will train."""
    tr, on_gpu = cfg.trainer, device.type == "cuda"
    liger = use_liger(tr.kernels, on_gpu)
    shape = Shape.of(model.config)
    if cfg.lora.enabled:
        trainable = lora_parameters(shape, cfg.lora.r, list(cfg.lora.target_modules), list(cfg.lora.modules_to_save))
    else:
        trainable = sum(p.numel() for p in model.parameters())
    first = next(model.parameters())
    resident = first.device.type == device.type  # weights already counted in the free memory
    plan = plan_checkpointing(
        checkpointing_setting(tr.gradient_checkpointing), shape=shape,
        tokens=tr.per_device_train_batch_size * cfg.data.max_seq_len,
        dtype_bytes=torch.finfo(model.dtype).bits // 8, weight_bytes=0 if resident else weight_bytes(model),
        trainable=trainable, free_bytes=free_memory(device),
        lora_dropout=cfg.lora.enabled and cfg.lora.dropout > 0, fused_loss=liger)
    attention = getattr(model.config, "_attn_implementation", None) or "sdpa"
    name = torch.cuda.get_device_name(device) if on_gpu else "cpu"
    return SpeedPlan(attention, liger, plan, bool(tr.compile), name)


def peak_gpu_memory() -> dict[str, float]:
    """The largest GPU memory this process allocated (weights included), for metrics.json; {} on CPU."""
    if not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return {}
    return {"peak_gpu_memory_gib": round(torch.cuda.max_memory_allocated() / 2 ** 30, 2)}
