"""Gradient checkpointing only when it is needed (`trainer.gradient_checkpointing=auto`).

Checkpointing saves activation memory by recomputing each layer's forward pass in the backward pass:
about a third more compute. `plan_checkpointing` estimates what one training step needs without it
(weights, LoRA optimizer state, the activations autograd keeps, the loss's logits) and turns it on only
when that would not fit in the device's free memory. The estimate counts the tensors a Llama layer saves
for backward with memory-efficient attention (SDPA, flex or flash: no score matrix); it is meant to be
on the safe side, not exact.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

CHECKPOINTING = ("auto", "true", "false")
GIB = 2 ** 30
USABLE = 0.85  # of the free memory: the allocator's fragmentation, kernels' workspaces, the CUDA context


@dataclass(frozen=True)
class Shape:
    hidden: int
    intermediate: int
    layers: int
    kv_hidden: int  # key/value width: kv heads x head size
    vocab: int

    @classmethod
    def of(cls, config: Any) -> "Shape":
        """The shape of a transformers Llama-like config."""
        heads = config.num_attention_heads
        kv_heads = getattr(config, "num_key_value_heads", None) or heads
        return cls(config.hidden_size, config.intermediate_size, config.num_hidden_layers,
                   config.hidden_size // heads * kv_heads, config.vocab_size)


def checkpointing_setting(value: Any) -> str:
    """`trainer.gradient_checkpointing` as one of CHECKPOINTING (a YAML bool arrives as 'True'/'False')."""
    return str(value).lower()


def layer_activation_elements(s: Shape, lora_dropout: bool) -> int:
    """Elements one decoder layer saves for backward, per token, without checkpointing."""
    h, kv, i = s.hidden, s.kv_hidden, s.intermediate
    norms = 2 * 3 * h  # two RMSNorms: the float32 upcast of the input (2 half-size elements) and the output
    attention = (h + 2 * kv) + (2 * h + 2 * kv) + 2 * h  # q k v, RoPE's rotated copies, output and its transpose
    mlp = 4 * i  # gate, up, SiLU(gate), SiLU(gate) * up
    dropout = int(1.5 * (6 * h + i)) if lora_dropout else 0  # LoRA's dropped inputs (q k v o gate up down) + masks
    return norms + attention + mlp + dropout


def lora_parameters(s: Shape, r: int, targets: list[str], full_modules: list[str]) -> int:
    """Trainable parameters of a LoRA adapter of rank r on `targets`, plus `full_modules` trained in full."""
    widths = {"q_proj": (s.hidden, s.hidden), "k_proj": (s.hidden, s.kv_hidden), "v_proj": (s.hidden, s.kv_hidden),
              "o_proj": (s.hidden, s.hidden), "gate_proj": (s.hidden, s.intermediate),
              "up_proj": (s.hidden, s.intermediate), "down_proj": (s.intermediate, s.hidden)}
    adapters = sum(r * sum(widths.get(t, (s.hidden, s.hidden))) for t in targets) * s.layers
    full = sum(s.vocab * s.hidden for m in full_modules if m in ("embed_tokens", "lm_head"))
    return adapters + full


@dataclass(frozen=True)
class CheckpointPlan:
    enabled: bool
    needed_bytes: int  # estimated peak of one step without checkpointing
    free_bytes: int
    message: str

    def metrics(self) -> dict[str, Any]:
        return {"gradient_checkpointing": self.enabled, "memory_needed_gib": round(self.needed_bytes / GIB, 2),
                "memory_free_gib": round(self.free_bytes / GIB, 2)}


def plan_checkpointing(setting: str, *, shape: Shape, tokens: int, dtype_bytes: int, weight_bytes: int,
                       trainable: int, free_bytes: int, lora_dropout: bool, fused_loss: bool) -> CheckpointPlan:
    """Decide gradient checkpointing for one step of `tokens` tokens (batch x sequence length).
    `weight_bytes`: weights still to be placed in `free_bytes` (0 when they are already there);
    `trainable`: parameters with float32 weights, gradients and AdamW state (16 bytes each);
    `fused_loss`: the loss never materialises the full logits (Liger's fused linear cross-entropy)."""
    acts = shape.layers * layer_activation_elements(shape, lora_dropout) * tokens * dtype_bytes
    logits = 0 if fused_loss else tokens * shape.vocab * (dtype_bytes + 12)  # logits, float32 copy, log-softmax, grad
    optimizer = trainable * 16
    needed = weight_bytes + optimizer + acts + logits
    parts = (f"weights {weight_bytes / GIB:.1f} + optimizer {optimizer / GIB:.1f} + activations {acts / GIB:.1f} "
             f"+ logits {logits / GIB:.1f} GiB")
    if setting in ("true", "false"):
        enabled = setting == "true"
        return CheckpointPlan(enabled, needed, free_bytes, f"gradient checkpointing: {'on' if enabled else 'off'} "
                              f"(trainer.gradient_checkpointing={setting}; without it a step needs ~{needed / GIB:.1f}"
                              f" GiB: {parts}; {free_bytes / GIB:.1f} GiB free)")
    enabled = needed > USABLE * free_bytes
    verdict = "does not fit" if enabled else "fits"
    return CheckpointPlan(enabled, needed, free_bytes,
                          f"gradient checkpointing: {'on' if enabled else 'off'} (auto: one step of {tokens:,} tokens "
                          f"without it needs ~{needed / GIB:.1f} GiB = {parts}; {verdict} in {USABLE:.0%} of "
                          f"{free_bytes / GIB:.1f} GiB free)")


def free_memory(device: torch.device) -> int:
    """Free bytes on a CUDA device, or the memory the OS can give this process on CPU (MemAvailable)."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    import os

    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def weight_bytes(model: Any) -> int:
    """Bytes the model's parameters and buffers hold (quantized weights as stored)."""
    tensors = [*model.parameters(), *model.buffers()]
    return sum(t.numel() * t.element_size() for t in tensors)
