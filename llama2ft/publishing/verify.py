"""Verification of a merged model: its logits against base + adapters through peft."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from llama2ft.core.errors import UserError
from llama2ft.data.dialogue import Turn
from llama2ft.data.templates import Template, encode_prompt, get_template
from llama2ft.model.loading import load_model

# Relative tolerance of the verification (max |diff| / max(1, max |logit|)) per output dtype.
TOLERANCE = {"float32": 1e-4, "bfloat16": 3e-2, "float16": 1e-2}
PROMPTS = ["你好，请介绍一下你自己。", "What is 12 plus 30?", "用一句话解释什么是机器学习。"]


def prompt_template(template_name: str, system: Optional[str]) -> Template:
    """The template that training used, by name (an unknown name is a UserError)."""
    try:
        return get_template(template_name, system)
    except ValueError as exc:
        raise UserError(str(exc)) from exc


def prompt_ids(template_name: str, system: Optional[str], tok: Any) -> list[list[int]]:
    """The verification prompts, rendered with the template that training used."""
    template = prompt_template(template_name, system)
    return [encode_prompt(template, tok, [Turn("human", p)]) for p in PROMPTS]


def reference_model(base: Path, adapters: list[Path], vocab: int, rope_scaling: Optional[dict] = None,
                    scorer: bool = False) -> Any:
    """float32 base (with the RoPE scaling the adapters trained with) + adapters through peft: all but
    the last merged in turn, the last one live. `scorer`: as a sequence-classification model (a reward model)."""
    import torch
    from peft import PeftModel

    model = load_model(str(base), torch.float32, rope_scaling=rope_scaling, scorer=scorer)
    if model.get_input_embeddings().weight.shape[0] != vocab:
        model.resize_token_embeddings(vocab)  # the adapter saved resized embeddings/head
    for i, path in enumerate(adapters):
        model = PeftModel.from_pretrained(model, str(path))
        if i < len(adapters) - 1:
            model = model.merge_and_unload()
    return model.eval()


def verify(base: Path, adapters: list[Path], merged: Path, ids: list[list[int]], vocab: int,
           rel_tol: float, rope_scaling: Optional[dict] = None, scorer: bool = False) -> tuple[float, float]:
    """Max |logit difference| of merged vs base+adapters and the tolerance used; UserError if over. A
    scorer's logits are its scores, the merged folder loaded as stock transformers loads a reward model."""
    import gc

    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    def logits(model: Any) -> list[Any]:
        with torch.no_grad():
            return [model(input_ids=torch.tensor([x])).logits[0].float() for x in ids]

    ref = logits(reference_model(base, adapters, vocab, rope_scaling, scorer))
    gc.collect()  # free the reference before loading the merged copy
    # loaded in float32 so that only the weights' rounding to the output dtype shows, not half-precision math
    auto = AutoModelForSequenceClassification if scorer else AutoModelForCausalLM
    got = logits(auto.from_pretrained(str(merged), dtype=torch.float32).eval())
    scale = max(1.0, max(float(r.abs().max()) for r in ref))
    diff = max(float((r - g).abs().max()) for r, g in zip(ref, got))
    tol = rel_tol * scale
    if not diff <= tol:
        raise UserError(f"verification failed: merged logits differ from base+adapter by up to {diff:.4g} "
                        f"(tolerance {tol:.3g}); nothing was written")
    return diff, tol
