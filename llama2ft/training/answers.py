"""Greedy answers to held-out questions before and after training, the same for every method: their match
with the wanted answers (printed, kept in metrics.json) and the first few shown (`sample_eval`)."""
from __future__ import annotations

from typing import Any, Optional

from omegaconf import DictConfig

from llama2ft.data.templates import Template
from llama2ft.evaluation.heldout import QA, exact_match_rate, greedy_answers
from llama2ft.training import distributed


def mark(answer: str, qa: QA) -> str:
    if answer.strip() == qa.reference.strip():
        return "✓"
    return "✗ (the rejected answer)" if qa.rejected is not None and answer.strip() == qa.rejected.strip() else "✗"


def show_answers(cfg: DictConfig, model: Any, tokenizer: Any, template: Template, questions: list[QA],
                 label: str, when: str) -> Optional[float]:
    """The share of greedy answers equal to the wanted ones (None when sample_eval is off or there are
    no questions); `label` names the figure ("exact match")."""
    se = cfg.sample_eval
    if not se.enabled or not questions or not distributed.is_main_process():
        return None
    answers = greedy_answers(model, tokenizer, template, questions, se.max_new_tokens)
    model.train()
    rate = exact_match_rate(answers, questions)
    print(f"\n{label} {when}: {rate:.0%} on {len(questions)} held-out questions", flush=True)
    for qa, answer in list(zip(questions, answers))[: se.show]:
        print(f"  {mark(answer, qa)} Q: {qa.history[-1].text}\n    A: {answer!r}   (expected {qa.reference!r})",
              flush=True)
    return rate
