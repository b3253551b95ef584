"""The embedded default model: a seeded random-init Llama built from the `model.init` shape."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from llama2ft.model.loading import save_tokenizer


def build_tiny_base(init: Any, tokenizer: Any, out_dir: Path) -> str:
    """Build the Llama of the `model.init` node and save it, so that adapters trained on it load with
    stock peft (their base_model_name_or_path is this folder)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    vocab = len(tokenizer)
    config = LlamaConfig(
        vocab_size=vocab + (-vocab % 32),  # bitsandbytes' CPU 4-bit kernels want widths in multiples of 32
        hidden_size=init.hidden_size,
        intermediate_size=init.intermediate_size,
        num_hidden_layers=init.num_hidden_layers,
        num_attention_heads=init.num_attention_heads,
        num_key_value_heads=init.num_key_value_heads,
        max_position_embeddings=init.max_position_embeddings,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(init.seed)
    model = LlamaForCausalLM(config)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    save_tokenizer(tokenizer, out_dir)
    return str(out_dir)
