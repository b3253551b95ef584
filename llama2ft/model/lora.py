"""peft LoRA: wrap a base for training (quantized bases prepared first), and load a trained adapter
onto its base for inference."""
from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any, Optional

from llama2ft.core.errors import UserError, first_line
from llama2ft.core.files import atomic_dir
from llama2ft.model.embeddings import adapter_vocab_rows

LLAMA_PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
# lora.init -> peft's init_lora_weights. PiSSA and OLoRA start the adapter from a factorisation of the
# base weight and subtract it from the base, so their adapter only fits that changed base until it is
# saved converted (see save_adapter).
LORA_INITS = {"default": True, "gaussian": "gaussian", "pissa": "pissa", "olora": "olora"}
BASE_CHANGING_INITS = ("pissa", "olora")


def prepare_for_training(model: Any, quantized: bool, gradient_checkpointing: bool) -> Any:
    """No KV cache while training (useless there, and it clashes with checkpointing); a quantized
    base gets peft's k-bit preparation (norms in float32, input gradients for checkpointing)."""
    model.config.use_cache = False
    if quantized:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing,
                                                gradient_checkpointing_kwargs={"use_reentrant": False})
    return model


def task_type(scorer: bool) -> str:
    """peft's task of an adapter: a causal LM's, or a scorer's (a reward model: peft trains its `score`
    head in full, as modules_to_save)."""
    return "SEQ_CLS" if scorer else "CAUSAL_LM"


def adapter_task(adapter: str | Path) -> Optional[str]:
    """The peft task an adapter folder was saved for (None when its config does not say)."""
    config = Path(adapter) / "adapter_config.json"
    return json.loads(config.read_text(encoding="utf-8")).get("task_type") if config.is_file() else None


def apply_lora(model: Any, lora: Any, seed: int, also_save: list[str] | tuple[str, ...] = (),
               scorer: bool = False) -> Any:
    """Wrap `model` in a peft LoRA adapter described by the `lora` config node (seeded: LoRA's A
    matrices are drawn here); `also_save` modules train in full besides lora.modules_to_save; `scorer`:
    `model` is a sequence-classification model (model/loading.py `load_model(scorer=True)`)."""
    from peft import LoraConfig, get_peft_model
    from transformers import set_seed

    set_seed(seed)
    to_save = list(dict.fromkeys([*lora.modules_to_save, *also_save]))
    config = LoraConfig(
        r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=list(lora.target_modules),
        modules_to_save=to_save or None, task_type=task_type(scorer), bias="none", use_dora=lora.use_dora,
        use_rslora=lora.use_rslora, init_lora_weights=LORA_INITS[lora.init])
    try:
        return get_peft_model(model, config)
    except ValueError as exc:
        raise UserError(f"lora.target_modules={list(lora.target_modules)}: {first_line(exc)}") from exc


def load_adapter(model: Any, adapter: str, base: str, trainable: bool = False, scorer: bool = False) -> Any:
    """`model` with the trained adapter at `adapter` (its embeddings resized first when the adapter was
    trained with an extended tokenizer; `trainable`: to train it further); a mismatch is one UserError.
    `scorer` (`model` is a sequence-classification model): a causal LM's adapter keeps training as a
    scorer's (`as_scorer_adapter`)."""
    from peft import PeftModel

    rows = adapter_vocab_rows(adapter)
    if rows is not None and rows != model.get_input_embeddings().weight.shape[0]:
        model.resize_token_embeddings(rows)
    task = adapter_task(adapter)
    if task == task_type(True) and not scorer:
        raise UserError(f"adapter {adapter} is a reward model's (it scores answers; method=rm): it writes no text")
    try:
        if scorer and task != task_type(True):
            return as_scorer_adapter(model, adapter)
        return PeftModel.from_pretrained(model, adapter, is_trainable=trainable)
    except (RuntimeError, ValueError, KeyError) as exc:
        raise UserError(f"adapter {adapter} does not fit the base model {base}: {first_line(exc)}") from exc


def as_scorer_adapter(model: Any, adapter: str) -> Any:
    """A causal LM's trained adapter (an SFT run's) on the sequence-classification `model`, to train further
    as a reward model's: the same LoRA pairs and saved modules, a new `score` head trained in full, and the LM
    head it saved left out (a scorer has none)."""
    from peft import LoraConfig, get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict
    from safetensors.torch import load_file

    config = LoraConfig.from_pretrained(adapter)
    config.task_type, config.inference_mode = task_type(True), False
    peft_model = get_peft_model(model, config)
    own = get_peft_model_state_dict(peft_model)  # the new score head's included: peft loads all or nothing
    weights = load_file(str(Path(adapter) / "adapter_model.safetensors"))
    homeless = [k for k in weights if k not in own and ".lm_head." not in k]
    if homeless:
        raise ValueError(f"weights the model has no place for: {', '.join(homeless[:3])}")
    set_peft_model_state_dict(peft_model, {**own, **{k: v for k, v in weights.items() if k in own}})
    return peft_model


def changes_base(lora: Any) -> bool:
    """Whether the adapter's initialisation rewrites the base weights (PiSSA, OLoRA)."""
    return lora.enabled and lora.init in BASE_CHANGING_INITS


def save_initial_adapter(model: Any, folder: Path) -> None:
    """The untrained PiSSA/OLoRA adapter, kept to convert the trained one (peft needs the pair)."""
    with atomic_dir(folder, exists="replace") as tmp:
        model.save_pretrained(str(tmp))


def save_adapter(model: Any, folder: Path, initial: Optional[Path]) -> None:
    """Save the adapter into `folder`. With `initial` (a PiSSA/OLoRA run) peft saves it converted to a
    plain LoRA of twice the rank relative to the *original* base: [A | A0], [B | -B0], so that merge,
    chat and stock peft apply it to the unchanged base model."""
    if initial is None:
        model.save_pretrained(str(folder))
    else:
        with warnings.catch_warnings():  # peft warns that PiSSA should be converted: this is the conversion
            warnings.filterwarnings("ignore", message="PiSSA changes the base weights")
            model.save_pretrained(str(folder), path_initial_model_for_weight_conversion=str(initial))
        restore_saved_modules(model, folder)


def restore_saved_modules(model: Any, folder: Path) -> None:
    """peft's conversion keeps only the LoRA pairs, yet the adapter config still lists modules_to_save:
    put their trained copies back, or the adapter would not load."""
    from peft import get_peft_model_state_dict
    from safetensors.torch import load_file, save_file

    path = Path(folder) / "adapter_model.safetensors"
    converted = load_file(str(path))
    trained = get_peft_model_state_dict(model)
    missing = {k: v.detach().cpu().contiguous() for k, v in trained.items() if k not in converted and "lora_" not in k}
    if missing:
        save_file({**converted, **missing}, str(path), metadata={"format": "pt"})
