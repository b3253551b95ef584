"""Batching: right-pad token ids and pad labels with -100 so padding is never trained; packed rows
carry `position_ids` and no attention mask."""
from __future__ import annotations

from typing import Any

import torch

from llama2ft.data.templates import IGNORE_INDEX


class PadCollator:
    """Pads each batch to its longest row, rounded up to `multiple_of` (tensor-core friendly)."""

    def __init__(self, pad_token_id: int, multiple_of: int = 8):
        self.pad_token_id = pad_token_id
        self.multiple_of = multiple_of

    def pad(self, features: list[dict[str, Any]]) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
        """Right-padded ids and labels, and each row's real length."""
        lengths = [len(f["input_ids"]) for f in features]
        width = -(-max(lengths) // self.multiple_of) * self.multiple_of
        ids = torch.full((len(features), width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(features), width), IGNORE_INDEX, dtype=torch.long)
        for i, (f, n) in enumerate(zip(features, lengths)):
            ids[i, :n] = torch.as_tensor(f["input_ids"])
            labels[i, :n] = torch.as_tensor(f["labels"])
        return ids, labels, lengths

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        ids, labels, lengths = self.pad(features)
        mask = (torch.arange(ids.shape[1])[None, :] < torch.tensor(lengths)[:, None]).long()
        return {"input_ids": ids, "labels": labels, "attention_mask": mask}


class PackedCollator(PadCollator):
    """Pads packed rows to the batch's longest. Each sample's positions start again at 0 (from the
    row's `seq_lens`); padding forms its own position run and is never trained. No attention mask:
    transformers detects packed rows from `position_ids` only when none is given."""

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        ids, labels, lengths = self.pad(features)
        positions = torch.empty_like(ids)
        for i, (f, n) in enumerate(zip(features, lengths)):
            runs = [*f["seq_lens"], ids.shape[1] - n] if ids.shape[1] > n else list(f["seq_lens"])
            positions[i] = torch.cat([torch.arange(int(k)) for k in runs])
        return {"input_ids": ids, "labels": labels, "position_ids": positions}
