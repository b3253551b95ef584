"""Greedy answers to held-out questions and their exact-match accuracy (the default run's proof
that it learned something)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from llama2ft.dialogue import Turn
from llama2ft.templates import Template, encode_prompt


@dataclass
class QA:
    history: list[Turn]  # ends with the question (a human turn)
    reference: str


def questions_from_dialogues(dialogues: list[list[Turn]], limit: int) -> list[QA]:
    """One question per dialogue: everything up to its last answer, which is the reference."""
    out: list[QA] = []
    for turns in dialogues:
        last = max((i for i, t in enumerate(turns) if t.role == "assistant"), default=None)
        if last is None or last == 0:
            continue
        out.append(QA(turns[:last], turns[last].text))
        if len(out) >= limit:
            break
    return out


@torch.no_grad()
def greedy_answers(model: Any, tokenizer: Any, template: Template, qas: list[QA], max_new_tokens: int,
                   batch_size: int = 16) -> list[str]:
    """Greedy decoding with left padding, stopping at EOS; the template's stop text is stripped."""
    model.eval()
    device = next(model.parameters()).device
    answers: list[str] = []
    for start in range(0, len(qas), batch_size):
        prompts = [encode_prompt(template, tokenizer, qa.history) for qa in qas[start:start + batch_size]]
        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, p in enumerate(prompts):
            ids[i, width - len(p):] = torch.as_tensor(p)
            mask[i, width - len(p):] = 1
        out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), do_sample=False,
                             max_new_tokens=max_new_tokens, eos_token_id=tokenizer.eos_token_id,
                             pad_token_id=tokenizer.pad_token_id)
        for row in out[:, width:].tolist():
            if tokenizer.eos_token_id in row:
                row = row[: row.index(tokenizer.eos_token_id)]
            text = tokenizer.decode(row, skip_special_tokens=True)
            stop = template.stop_text()
            answers.append(text[: -len(stop)] if stop and text.endswith(stop) else text)
    return answers


def exact_match(answers: list[str], qas: list[QA]) -> float:
    if not qas:
        return 0.0
    return sum(a.strip() == qa.reference.strip() for a, qa in zip(answers, qas)) / len(qas)
