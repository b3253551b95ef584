"""Attention for packed rows without flash-attention (`packed_attention` picks one per device).

SDPA on a packed row with a block-diagonal mask still computes the full row x row score matrix and takes
the slow masked path. `varlen_sdpa` instead runs causal SDPA on each sample of the row, so a packed row
costs sum(len_i^2) and uses the fast causal kernels. It is registered through transformers' public
`AttentionInterface` / `AttentionMaskInterface` (no patching); any case it does not handle (a KV cache,
padding masks in unpacked batches, generation) falls through to transformers' own SDPA.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

NAME = "llama2ft_varlen_sdpa"


def _segments(position_ids: torch.Tensor) -> list[tuple[int, int]]:
    starts = torch.nonzero(position_ids == 0).flatten().tolist()
    if not starts or starts[0] != 0:
        starts = [0, *starts]
    ends = [*starts[1:], position_ids.shape[0]]
    return list(zip(starts, ends))


def varlen_sdpa(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                attention_mask: Optional[torch.Tensor], dropout: float = 0.0, scaling: Optional[float] = None,
                **kwargs) -> tuple[torch.Tensor, None]:
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    position_ids = kwargs.get("position_ids")
    packed = (position_ids is not None and query.shape[2] == key.shape[2] and query.shape[2] > 1
              and position_ids.shape[-1] == query.shape[2] and bool((position_ids[..., 1:] == 0).any()))
    if not packed:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    position_ids = position_ids.expand(query.shape[0], -1)
    gqa = key.shape[1] != query.shape[1]
    out = torch.empty_like(query)
    for b in range(query.shape[0]):
        for start, end in _segments(position_ids[b]):
            out[b:b + 1, :, start:end] = F.scaled_dot_product_attention(
                query[b:b + 1, :, start:end], key[b:b + 1, :, start:end], value[b:b + 1, :, start:end],
                dropout_p=dropout if module.training else 0.0, scale=scaling, is_causal=True, enable_gqa=gqa)
    return out.transpose(1, 2).contiguous(), None


def register() -> str:
    """Make `attn_implementation="llama2ft_varlen_sdpa"` available; returns the name."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(NAME, varlen_sdpa)
    AttentionMaskInterface.register(NAME, sdpa_mask)
    return NAME


def packed_row_multiple(attention: str) -> int:
    """What a batch of packed rows is padded to a multiple of: flex_attention is compiled per shape and works
    in blocks of 128, so its rows take a few lengths only; 8 (tensor cores) otherwise."""
    return 128 if attention == "flex_attention" else 8


def flex_available() -> bool:
    """FlexAttention can train here: torch's flex_attention and Triton to compile it (its backward does not
    run on CPU in torch 2.13)."""
    import importlib.util

    try:
        from torch.nn.attention import flex_attention  # noqa: F401  (torch >= 2.5)
    except ImportError:
        return False
    return importlib.util.find_spec("triton") is not None


def packed_attention(cuda: bool) -> str:
    """The attention used for packed rows, each costing sum(len_i^2) rather than row^2 where possible:
    on a GPU flash-attention's varlen kernels when installed, else FlexAttention with a block mask built
    from the packed position_ids (transformers' `flex_attention`), else masked SDPA (on an H100 the
    per-sample loop measured slower than one masked kernel call); on CPU per-sample causal SDPA (faster
    there than the masked path; flex has no CPU backward)."""
    import importlib.util

    if cuda:
        if importlib.util.find_spec("flash_attn") is not None:
            return "flash_attention_2"
        return "flex_attention" if flex_available() else "sdpa"
    return register()
