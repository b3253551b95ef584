"""The config of the embedded SFT run that `llama2ft-train method=dpo` (or orpo) starts from when it is
given no model and no `init_from`."""
from __future__ import annotations

from omegaconf import DictConfig


def default_sft_config(seed: int) -> DictConfig:
    """`llama2ft-train` with no overrides (the embedded tiny model on the sample task), seeded with `seed`.
    Composed by the running Hydra app, so it sees the same config folder and schemas."""
    from hydra import compose

    return compose(config_name="train", overrides=[f"trainer.seed={seed}"])
