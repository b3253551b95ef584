"""Packing: several samples per `max_seq_len` row without contamination.

Each sample keeps its own positions (reset to 0), and the model is given `position_ids` without an
attention mask: transformers then builds a block-diagonal causal mask from the position resets (SDPA
and eager on CPU) or uses flash-attention's varlen kernels, so a sample never attends to another.
The first label of every sample is masked so no sample is trained to predict the next one's BOS.
"""
from __future__ import annotations

import bisect
from typing import Any

import torch

from llama2ft.templates import IGNORE_INDEX


def pack_bins(lengths: list[int], capacity: int) -> list[list[int]]:
    """Group sample indices into bins of total length <= capacity (best-fit decreasing; deterministic)."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    bins: list[list[int]] = []
    free: list[tuple[int, int]] = []  # (free space, bin index), sorted
    for i in order:
        need = lengths[i]
        k = bisect.bisect_left(free, (need, -1))
        if k < len(free):
            space, b = free.pop(k)
            bins[b].append(i)
            space -= need
        else:
            b, space = len(bins), capacity - need
            bins.append([i])
        if space > 0:
            bisect.insort(free, (space, b))
    return bins


def pack_columns(input_ids: list[list[int]], labels: list[list[int]], capacity: int) -> dict[str, list]:
    """Packed `input_ids`, `labels`, `position_ids` columns (samples must already be <= capacity)."""
    out: dict[str, list] = {"input_ids": [], "labels": [], "position_ids": []}
    for group in pack_bins([len(x) for x in input_ids], capacity):
        ids: list[int] = []
        labs: list[int] = []
        pos: list[int] = []
        for i in sorted(group):  # keep the data's order inside a row
            ids += input_ids[i]
            labs += [IGNORE_INDEX] + labels[i][1:]
            pos += range(len(input_ids[i]))
        out["input_ids"].append(ids)
        out["labels"].append(labs)
        out["position_ids"].append(pos)
    return out


class PackedCollator:
    """Pads packed rows to the batch's longest; padding forms its own position run and is never trained."""

    def __init__(self, pad_token_id: int, multiple_of: int = 8):
        self.pad_token_id = pad_token_id
        self.multiple_of = multiple_of

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        longest = max(len(f["input_ids"]) for f in features)
        width = -(-longest // self.multiple_of) * self.multiple_of
        ids = torch.full((len(features), width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(features), width), IGNORE_INDEX, dtype=torch.long)
        positions = torch.arange(width, dtype=torch.long).repeat(len(features), 1)
        for i, f in enumerate(features):
            n = len(f["input_ids"])
            ids[i, :n] = torch.as_tensor(f["input_ids"])
            labels[i, :n] = torch.as_tensor(f["labels"])
            positions[i, :n] = torch.as_tensor(f["position_ids"])
            positions[i, n:] = torch.arange(width - n)
        return {"input_ids": ids, "labels": labels, "position_ids": positions}
