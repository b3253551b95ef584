"""The preference losses on summed answer log-probs: DPO and its variants (Rafailov et al. 2023; IPO: Azar
et al. 2023; hinge: SLiC) and ORPO (Hong et al. 2024), written from the papers and tested against hand
computations; `training/preference.py` runs them in a Trainer."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

METHODS = ("sft", "dpo", "orpo")
DPO_LOSS_TYPES = ("sigmoid", "ipo", "hinge")


def sequence_logps(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed log-probability of each row's labelled tokens (next-token shift applied; `ignore_index`
    marks unscored tokens), and their count."""
    logits, labels = logits[:, :-1].float(), labels[:, 1:]
    scored = labels != ignore_index
    token_logps = torch.gather(logits.log_softmax(-1), 2, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return (token_logps * scored).sum(-1), scored.sum(-1)


def dpo_loss(chosen: torch.Tensor, rejected: torch.Tensor, ref_chosen: torch.Tensor, ref_rejected: torch.Tensor,
             beta: float, loss_type: str = "sigmoid", label_smoothing: float = 0.0,
             chosen_len: Optional[torch.Tensor] = None, rejected_len: Optional[torch.Tensor] = None,
             sft_weight: float = 0.0) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Per-pair DPO loss from summed answer log-probs of the policy and the reference, and the implicit
    rewards beta * (policy - reference). IPO compares per-token averages (its paper's length normalisation).
    `sft_weight` adds that weight times the chosen answer's mean token NLL (RPO, Pang et al. 2024): DPO
    alone may lower the chosen answer's probability too, as long as the rejected one falls faster."""
    nll = -chosen / chosen_len if sft_weight else None
    if loss_type == "ipo":
        chosen, rejected = chosen / chosen_len, rejected / rejected_len
        ref_chosen, ref_rejected = ref_chosen / chosen_len, ref_rejected / rejected_len
    h = (chosen - ref_chosen) - (rejected - ref_rejected)
    if loss_type == "sigmoid":
        loss = -(1 - label_smoothing) * F.logsigmoid(beta * h) - label_smoothing * F.logsigmoid(-beta * h)
    elif loss_type == "ipo":
        loss = (h - 1 / (2 * beta)) ** 2
    elif loss_type == "hinge":
        loss = torch.relu(1 - beta * h)
    else:
        raise ValueError(f"unknown DPO loss_type {loss_type!r}; choose one of {', '.join(DPO_LOSS_TYPES)}")
    if nll is not None:
        loss = loss + sft_weight * nll
    rewards = {"chosen": beta * (chosen - ref_chosen).detach(), "rejected": beta * (rejected - ref_rejected).detach()}
    return loss, rewards


def orpo_loss(chosen: torch.Tensor, rejected: torch.Tensor, chosen_len: torch.Tensor, rejected_len: torch.Tensor,
              beta: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Per-pair ORPO loss: the chosen answer's mean token NLL plus beta times -log sigmoid of the log odds
    ratio of the per-token average probabilities; rewards are beta * average log-probs."""
    avg_c, avg_r = chosen / chosen_len, rejected / rejected_len
    log_odds = (avg_c - avg_r) - (torch.log1p(-torch.exp(avg_c)) - torch.log1p(-torch.exp(avg_r)))
    loss = -avg_c - beta * F.logsigmoid(log_odds)
    return loss, {"chosen": beta * avg_c.detach(), "rejected": beta * avg_r.detach(),
                  "log_odds": log_odds.detach(), "nll": -avg_c.detach()}
