"""A Trainer that logs the figures of its own loss (rewards, margins, KL, ...) with the loss: each figure
averaged over the logging window, train and eval apart, as the Trainer logs its own figures. The base of
the preference methods' and GRPO's Trainers."""
from __future__ import annotations

from functools import cache
from typing import Any


@cache
def figures_trainer_class() -> type:
    """Built lazily (transformers imports slowly), once, so that every subclass shares it."""
    from transformers import Trainer

    class FiguresTrainer(Trainer):
        def __init__(self, *args: Any, **kwargs: Any):
            super().__init__(*args, **kwargs)
            self._window: dict[str, dict[str, list[float]]] = {"train": {}, "eval": {}}

        def record(self, figures: dict[str, Any], training: bool) -> None:
            """Figures of one batch (floats or 0-d tensors), logged as their mean at the next log."""
            window = self._window["train" if training else "eval"]
            for key, value in figures.items():
                window.setdefault(key, []).append(float(value))

        def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
            split = "eval" if any(k.startswith("eval_") for k in logs) else "train"
            prefix = "eval_" if split == "eval" else ""
            for key, values in self._window[split].items():
                if values:
                    logs[f"{prefix}{key}"] = round(sum(values) / len(values), 4)
            self._window[split] = {}
            super().log(logs, *args, **kwargs)

    return FiguresTrainer
