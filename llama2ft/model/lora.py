"""peft LoRA: wrap a base for training (quantized bases prepared first), and load a trained adapter
onto its base for inference."""
from __future__ import annotations

from typing import Any

from llama2ft.core.errors import UserError, first_line
from llama2ft.model.embeddings import adapter_vocab_rows

LLAMA_PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def prepare_for_training(model: Any, quantized: bool, gradient_checkpointing: bool) -> Any:
    """No KV cache while training (useless there, and it clashes with checkpointing); a quantized
    base gets peft's k-bit preparation (norms in float32, input gradients for checkpointing)."""
    model.config.use_cache = False
    if quantized:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing,
                                                gradient_checkpointing_kwargs={"use_reentrant": False})
    return model


def apply_lora(model: Any, lora: Any, seed: int, also_save: list[str] | tuple[str, ...] = ()) -> Any:
    """Wrap `model` in a peft LoRA adapter described by the `lora` config node (seeded: LoRA's A
    matrices are drawn here); `also_save` modules train in full besides lora.modules_to_save."""
    from peft import LoraConfig, get_peft_model
    from transformers import set_seed

    set_seed(seed)
    to_save = list(dict.fromkeys([*lora.modules_to_save, *also_save]))
    config = LoraConfig(
        r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=list(lora.target_modules),
        modules_to_save=to_save or None, task_type="CAUSAL_LM", bias="none")
    try:
        return get_peft_model(model, config)
    except ValueError as exc:
        raise UserError(f"lora.target_modules={list(lora.target_modules)}: {first_line(exc)}") from exc


def load_adapter(model: Any, adapter: str, base: str, trainable: bool = False) -> Any:
    """`model` with the trained adapter at `adapter` (its embeddings resized first when the adapter was
    trained with an extended tokenizer; `trainable`: to train it further); a mismatch is one UserError."""
    from peft import PeftModel

    rows = adapter_vocab_rows(adapter)
    if rows is not None and rows != model.get_input_embeddings().weight.shape[0]:
        model.resize_token_embeddings(rows)
    try:
        return PeftModel.from_pretrained(model, adapter, is_trainable=trainable)
    except (RuntimeError, ValueError, KeyError) as exc:
        raise UserError(f"adapter {adapter} does not fit the base model {base}: {first_line(exc)}") from exc
