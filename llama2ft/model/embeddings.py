"""Embeddings and output head for a tokenizer larger than the model (`llama2ft-vocab`): grow them,
name them for peft, and read how many rows an adapter saved."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional


def resize_embeddings(model: Any, vocab: int, init: str) -> Optional[tuple[int, int]]:
    """Grow the embeddings and output head to hold `vocab` tokens (an extended tokenizer), rounded up
    to a multiple of 32 like the tiny base. init="mean": new rows are the mean of the old rows
    (transformers' mean_resizing, which adds noise of 1e-9 x their covariance), so a new token starts
    with an average embedding and an average logit and the loss does not jump; "normal": the model's
    own random init. Returns (old rows, new rows), or None when the model is already large enough."""
    from transformers import set_seed

    rows = model.get_input_embeddings().weight.shape[0]
    if vocab <= rows:
        return None
    set_seed(0)  # "mean" samples its (tiny) noise, "normal" its rows: reproducible either way
    model.resize_token_embeddings(vocab, pad_to_multiple_of=32, mean_resizing=init == "mean")
    return rows, model.get_input_embeddings().weight.shape[0]


def embedding_module_names(model: Any) -> list[str]:
    """Names (as peft's modules_to_save wants them) of the input embeddings and the output head."""
    wanted = [m for m in (model.get_input_embeddings(), model.get_output_embeddings()) if m is not None]
    return [name.rsplit(".", 1)[-1] for name, module in model.named_modules() if any(module is m for m in wanted)]


def adapter_vocab_rows(adapter: str) -> Optional[int]:
    """Rows of the embedding matrix an adapter saved in full (modules_to_save), e.g. after training with
    an extended tokenizer; None when it saved none."""
    from safetensors import safe_open

    path = Path(adapter) / "adapter_model.safetensors"
    if not path.is_file():
        return None
    with safe_open(str(path), framework="pt") as f:
        for key in f.keys():
            if "embed_tokens" in key and "lora_" not in key:
                return int(f.get_slice(key).get_shape()[0])
    return None
