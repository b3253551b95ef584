"""The model of bench/train_throughput.py: a randomly initialised Llama of a preset shape with LoRA on all
seven projections, built with the speed settings of one run (attention, Liger's kernels, gradient
checkpointing decided by llama2ft's memory estimate, as `llama2ft-train` decides them)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

_REPO = str(Path(__file__).resolve().parents[1])
if _REPO not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, _REPO)
from llama2ft.model.memory import CheckpointPlan, Shape, free_memory, lora_parameters, plan_checkpointing  # noqa: E402

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
PRESETS: dict[str, dict[str, int]] = {  # vocab 0: the tokenizer's
    "quick": dict(hidden=64, intermediate=192, layers=2, heads=2, vocab=0, r=4, alpha=8),
    "small": dict(hidden=256, intermediate=768, layers=4, heads=4, vocab=0, r=8, alpha=16),
    "7b": dict(hidden=4096, intermediate=11008, layers=32, heads=32, vocab=32000, r=64, alpha=128),
    "7b-2layers": dict(hidden=4096, intermediate=11008, layers=2, heads=32, vocab=32000, r=64, alpha=128),  # checks
}


def build_model(args: argparse.Namespace, vocab: int, attn: str, checkpointing: str, liger: bool,
                tokens: int, lora_dropout: float = 0.05) -> tuple[torch.nn.Module, CheckpointPlan]:
    """The preset's model on args.device in args.dtype, wrapped in LoRA. `checkpointing`: true | false | auto
    (llama2ft's estimate for a step of `tokens` tokens against the device's free memory, weights placed);
    `liger`: Liger's kernels applied through transformers' integration before peft wraps the model."""
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    p = PRESETS[args.preset]
    cfg = LlamaConfig(vocab_size=p["vocab"] or vocab, hidden_size=p["hidden"], intermediate_size=p["intermediate"],
                      num_hidden_layers=p["layers"], num_attention_heads=p["heads"], num_key_value_heads=p["heads"],
                      max_position_embeddings=max(2048, args.max_seq_len), bos_token_id=1, eos_token_id=2,
                      pad_token_id=0, tie_word_embeddings=False)
    torch.manual_seed(args.seed)
    with torch.device(args.device):
        model = LlamaForCausalLM._from_config(cfg, dtype=args.dtype, attn_implementation=attn)
    shape = Shape.of(cfg)
    plan = plan_checkpointing(checkpointing, shape=shape, tokens=tokens, dtype_bytes=torch.finfo(args.dtype).bits // 8,
                              weight_bytes=0, trainable=lora_parameters(shape, p["r"], TARGETS, []),
                              free_bytes=free_memory(torch.device(args.device)), lora_dropout=lora_dropout > 0,
                              fused_loss=liger)
    if plan.enabled:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    if liger:
        from transformers.integrations.liger import apply_liger_kernel

        apply_liger_kernel(model, None)
    lora = LoraConfig(r=p["r"], lora_alpha=p["alpha"], lora_dropout=lora_dropout, target_modules=TARGETS,
                      task_type="CAUSAL_LM")
    return get_peft_model(model, lora).train(), plan


def linear_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for n, p in model.named_parameters() if p.dim() == 2 and "embed_tokens" not in n)
