"""ORPO (Hong et al. 2024): the chosen answer's SFT loss plus an odds-ratio preference term; no reference."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from llama2ft.training.method import MethodSettings
from llama2ft.training.preference import PairMethod


@dataclass
class OrpoSettings(MethodSettings):
    name: str = "orpo"
    beta: float = 0.1  # weight of the odds-ratio term


def orpo_loss(chosen: torch.Tensor, rejected: torch.Tensor, chosen_len: torch.Tensor, rejected_len: torch.Tensor,
              beta: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Per-pair ORPO loss: the chosen answer's mean token NLL plus beta times -log sigmoid of the log odds
    ratio of the per-token average probabilities; rewards are beta * average log-probs."""
    avg_c, avg_r = chosen / chosen_len, rejected / rejected_len
    log_odds = (avg_c - avg_r) - (torch.log1p(-torch.exp(avg_c)) - torch.log1p(-torch.exp(avg_r)))
    loss = -avg_c - beta * F.logsigmoid(log_odds)
    return loss, {"chosen": beta * avg_c.detach(), "rejected": beta * avg_r.detach(),
                  "log_odds_ratio": log_odds.detach(), "nll_loss": -avg_c.detach()}


class ORPO(PairMethod):
    name = "orpo"
    Settings = OrpoSettings

    def pair_loss(self, s: Any, chosen: torch.Tensor, rejected: torch.Tensor, n_c: torch.Tensor, n_r: torch.Tensor,
                  batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return orpo_loss(chosen, rejected, n_c, n_r, s.beta)


METHOD = ORPO
