"""The reference log-probs of DPO, computed once before training with the starting model: no second copy
of the model is held, at the cost of one forward pass over the pairs (2 floats kept per pair). Each
process scores its share of the pairs and all of them receive every score."""
from __future__ import annotations

from typing import Any

import torch

from llama2ft.model.loading import quantized_layers
from llama2ft.training import distributed
from llama2ft.training.preference import all_pair_logps


def reference_logps(model: Any, features: list[dict], collator: Any, batch_size: int,
                    device: torch.device) -> list[tuple[float, float]]:
    """(chosen, rejected) summed answer log-probs of every pair under `model` as it is now, in order."""
    if not features:
        return []
    if not quantized_layers(model):  # a quantized model was loaded onto its device already
        model.to(device)
    world, rank = distributed.world_size(), distributed.rank()
    mine = all_pair_logps(model, features[rank::world], collator, batch_size)
    if world > 1 and torch.distributed.is_initialized():
        shares: list[Any] = [None] * world
        torch.distributed.all_gather_object(shares, mine)
    else:
        shares = [mine]
    out: list[tuple[float, float]] = [(0.0, 0.0)] * len(features)
    for r, share in enumerate(shares):
        for k, (chosen, rejected, _, _) in enumerate(share):
            out[r + k * world] = (chosen, rejected)
    return out
