"""Faster CPU inference: the model's linear layers run oneDNN matrix products on weights packed once.

PyTorch's CPU `nn.Linear` calls MKL, whose product of a few rows is slow here (it likely packs the whole
weight afresh on every call): on a 2-core AMD EPYC a 1024x2752 float32 product takes 256 us for 1 row but
1174 us for 8, so continuous batching gained little. oneDNN's `_linear_pointwise` on a weight reordered
once at load (what PyTorch's own compiler does on CPU) takes 131 us and 238 us (`bench/cpu_linear.py`,
`bench/serve_load.py`). Results keep the model's dtype and agree with MKL's to float rounding; a row's
result does not depend on the other rows for most shapes, which keeps batched greedy answers equal to
solo ones.

`pack_linears(model)` swaps each plain `nn.Linear` for a `PackedLinear` in place (as peft and bitsandbytes
swap layers); the unpacked weights are released, so memory does not grow (except for a head tied to the
embedding: the embedding keeps that weight, the head its packed copy). The model is then for inference
only: no gradients, no saving. Layers inside a peft adapter (LoRA's own and the base layer it wraps) and
quantized layers are left as they are.
"""
from __future__ import annotations

from typing import Any, Optional

import torch
from torch import nn

CPU_LINEAR = ("auto", "onednn", "torch")  # auto: onednn on CPU float32/bfloat16 where oneDNN works


class PackedLinear(nn.Module):
    """`nn.Linear`'s forward on a oneDNN-packed weight (inference only)."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.packed = torch.ops.mkldnn._reorder_linear_weight(linear.weight.detach(), None)
        self.bias: Optional[torch.Tensor] = None if linear.bias is None else linear.bias.detach().clone()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and x.requires_grad:
            raise RuntimeError("PackedLinear is for inference: it has no gradient (load the model unpacked to train)")
        return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


def onednn_works(dtype: torch.dtype) -> bool:
    """oneDNN is built in and packs and multiplies `dtype` on this CPU."""
    if not torch.backends.mkldnn.is_available() or not hasattr(torch.ops.mkldnn, "_linear_pointwise"):
        return False
    try:
        w, x = torch.ones(4, 8, dtype=dtype), torch.ones(2, 8, dtype=dtype)
        out = torch.ops.mkldnn._linear_pointwise(x, torch.ops.mkldnn._reorder_linear_weight(w, None), None,
                                                 "none", [], "")
        return bool(torch.all(out == 8))
    except (RuntimeError, AttributeError, NotImplementedError):
        return False


def should_pack(model: Any, mode: str) -> bool:
    """Whether `mode` (one of CPU_LINEAR) packs this model: CPU, float32 or bfloat16 weights, oneDNN working."""
    if mode == "torch":
        return False
    first = next(model.parameters(), None)
    if first is None or first.device.type != "cpu" or first.dtype not in (torch.float32, torch.bfloat16):
        return False
    return onednn_works(first.dtype)


def pack_linears(model: nn.Module) -> int:
    """Swap every plain `nn.Linear` of `model` (not a peft adapter's, not quantized) for a `PackedLinear`;
    returns how many were swapped."""
    swaps = []
    for name, module in model.named_modules():
        for child_name, child in module.named_children():
            full = f"{name}.{child_name}" if name else child_name
            if type(child) is nn.Linear and not any(part in full for part in _ADAPTER_PARTS):
                swaps.append((module, child_name, child))
    with torch.no_grad():
        for parent, child_name, child in swaps:
            setattr(parent, child_name, PackedLinear(child))
    return len(swaps)


# Names peft gives the layers of an adapter (LoRA's A/B, the base layer a LoRA layer wraps, the copies of
# `modules_to_save`): peft reads their weights, so they stay nn.Linear.
_ADAPTER_PARTS = ("lora_", "base_layer", "modules_to_save", "original_module")


def pack_for_cpu(model: nn.Module, mode: str = "auto") -> int:
    """`pack_linears` when `mode` (`cpu_linear=`) and the model call for it; returns how many were packed."""
    return pack_linears(model) if should_pack(model, mode) else 0
