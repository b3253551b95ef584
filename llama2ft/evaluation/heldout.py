"""Greedy answers to held-out questions and their exact-match accuracy (the default run's proof
that it learned something)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from llama2ft.data.dialogue import Turn
from llama2ft.data.templates import Template
from llama2ft.inference.engine import ChatModel
from llama2ft.inference.sampling import Sampling
from llama2ft.model.loading import context_length


@dataclass
class QA:
    history: list[Turn]  # ends with the question (a human turn)
    reference: str  # the wanted answer
    rejected: Optional[str] = None  # an unwanted answer (preference pairs), to tell it apart when it is given


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


def greedy_answers(model: Any, tokenizer: Any, template: Template, qas: list[QA], max_new_tokens: int,
                   batch_size: int = 16) -> list[str]:
    """Greedy answers through the generation core that chat and eval use (left padding, EOS stop)."""
    chat = ChatModel(model, tokenizer, template, context_length(model), "sample-eval")
    greedy = Sampling(do_sample=False, repetition_penalty=1.0, max_new_tokens=max_new_tokens)
    try:
        return [r.text for r in chat.chat_batch([qa.history for qa in qas], greedy, batch_size=batch_size)]
    finally:
        chat.close()


def exact_match_rate(answers: list[str], qas: list[QA]) -> float:
    """Share of answers equal to their reference (surrounding whitespace aside)."""
    if not qas:
        return 0.0
    return sum(a.strip() == qa.reference.strip() for a, qa in zip(answers, qas)) / len(qas)
