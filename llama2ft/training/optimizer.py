"""LoRA+ (`trainer.loraplus_lr_ratio`): the LoRA B matrices learn `ratio` times faster than A.

peft's `create_loraplus_optimizer` builds the parameter groups; it reaches the HF Trainer as an
optimizer *factory* through `optimizer_cls_and_kwargs`, so the Trainer creates it at its usual time
(after wrapping the model for DDP/FSDP/DeepSpeed) with the optimizer `trainer.optim` names, and keeps
its own learning-rate schedule, which scales every group alike.
"""
from __future__ import annotations

from typing import Any, Optional


class LoraPlusOptimizer:
    """Called by the Trainer as `LoraPlusOptimizer()(model, **kwargs)`."""

    def __call__(self, model: Any, *, args: Any, loraplus_lr_ratio: float) -> Any:
        from peft.optimizers import create_loraplus_optimizer
        from transformers import Trainer

        optimizer_cls, kwargs = Trainer.get_optimizer_cls_and_kwargs(args, model)
        kwargs = {k: v for k, v in kwargs.items() if k != "lr"}
        return create_loraplus_optimizer(model, optimizer_cls, lr=args.learning_rate,
                                         loraplus_lr_ratio=loraplus_lr_ratio,
                                         loraplus_weight_decay=args.weight_decay, **kwargs)


def optimizer_factory(args: Any, loraplus_lr_ratio: Optional[float]) -> Optional[tuple[Any, dict]]:
    """The Trainer's `optimizer_cls_and_kwargs` for LoRA+, or None for the Trainer's own optimizer."""
    if loraplus_lr_ratio is None:
        return None
    return LoraPlusOptimizer, {"args": args, "loraplus_lr_ratio": float(loraplus_lr_ratio)}
