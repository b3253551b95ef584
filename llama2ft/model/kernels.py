"""Fused training kernels (`trainer.kernels`): Liger Kernel's Triton RMSNorm, RoPE, SwiGLU and fused
linear cross-entropy (the full logits are never materialised). They are applied by transformers' own
integration (`TrainingArguments.use_liger_kernel`, which patches the model instance under the peft
wrapper when training starts); this module only decides whether they are used."""
from __future__ import annotations

import importlib.util

KERNELS = ("auto", "liger", "none")


def liger_installed() -> bool:
    """liger-kernel and the Triton it runs on are importable (the `gpu` extra)."""
    return all(importlib.util.find_spec(name) is not None for name in ("liger_kernel", "triton"))


def kernel_problems(kernels: str, on_gpu: bool) -> list[str]:
    """Config problems of `trainer.kernels` on this machine (`on_gpu`: training will run on CUDA)."""
    if kernels not in KERNELS:
        return [f"trainer.kernels={kernels!r}: must be one of {', '.join(KERNELS)}"]
    if kernels != "liger":
        return []
    problems = []
    if not on_gpu:
        problems.append("trainer.kernels=liger: Liger's Triton kernels need a CUDA GPU (this run trains on CPU); "
                        "use trainer.kernels=none or auto")
    if not liger_installed():
        problems.append("trainer.kernels=liger: liger-kernel is not installed (pip install 'llama2ft[gpu]')")
    return problems


def use_liger(kernels: str, on_gpu: bool) -> bool:
    """Whether Liger's kernels are applied: `liger` always (validated beforehand), `auto` on a CUDA GPU
    when liger-kernel is installed, `none` never."""
    return kernels == "liger" or (kernels == "auto" and on_gpu and liger_installed())
