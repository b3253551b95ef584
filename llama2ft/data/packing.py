"""Packing: several samples per `max_seq_len` row without contamination.

Each sample keeps its own positions (reset to 0), and the model is given `position_ids` without an
attention mask (see `collators.PackedCollator`): transformers then builds a block-diagonal causal mask
from the position resets, so a sample never attends to another. The first label of every sample is
masked so no sample is trained to predict the next one's BOS.
"""
from __future__ import annotations

import bisect

from llama2ft.data.templates import IGNORE_INDEX


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
    """Packed `input_ids`, `labels` and `seq_lens` (the samples' lengths in each row) columns of samples
    held in memory (each must already be <= capacity); `arrow_store.Packer` does the same on a stream."""
    out: dict[str, list] = {"input_ids": [], "labels": [], "seq_lens": []}
    for group in pack_bins([len(x) for x in input_ids], capacity):
        ids: list[int] = []
        labs: list[int] = []
        for i in sorted(group):  # keep the data's order inside a row
            ids += input_ids[i]
            labs += [IGNORE_INDEX] + labels[i][1:]
        out["input_ids"].append(ids)
        out["labels"].append(labs)
        out["seq_lens"].append([len(input_ids[i]) for i in sorted(group)])
    return out
