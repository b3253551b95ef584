"""SimPO (Meng et al. 2024): reference-free; the margin between the chosen and rejected answers' average
per-token log-probabilities, scaled by beta, must exceed the target margin gamma. Needs no reference
model and no reference log-probs, so it costs what SFT on the pairs costs."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from omegaconf import DictConfig

from llama2ft.training.method import MethodSettings
from llama2ft.training.preference import PairMethod


@dataclass
class SimpoSettings(MethodSettings):
    name: str = "simpo"
    beta: float = 2.0  # scale of the length-normalised reward (the paper uses 2.0-2.5)
    gamma: float = 1.0  # target reward margin (the paper's gamma/beta ~0.5)
    sft_weight: float = 0.0  # plus this weight x the chosen answer's mean token NLL (as in CPO-SimPO)


def simpo_loss(chosen: torch.Tensor, rejected: torch.Tensor, chosen_len: torch.Tensor, rejected_len: torch.Tensor,
               beta: float, gamma: float, sft_weight: float = 0.0) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Per-pair SimPO loss -log sigmoid(beta * avg_c - beta * avg_r - gamma) (+ sft_weight * -avg_c), with
    avg_* the per-token average answer log-probs; rewards are beta * avg_*."""
    avg_c, avg_r = chosen / chosen_len, rejected / rejected_len
    loss = -F.logsigmoid(beta * (avg_c - avg_r) - gamma)
    if sft_weight:
        loss = loss + sft_weight * -avg_c
    return loss, {"chosen": beta * avg_c.detach(), "rejected": beta * avg_r.detach(), "nll_loss": -avg_c.detach()}


class SimPO(PairMethod):
    name = "simpo"
    Settings = SimpoSettings

    def problems(self, cfg: DictConfig) -> list[str]:
        p, m = super().problems(cfg), cfg.method
        if m.gamma < 0:
            p.append(f"method.gamma={m.gamma}: must be >= 0 (the reward margin the chosen answer must win by)")
        if m.sft_weight < 0:
            p.append(f"method.sft_weight={m.sft_weight}: must be >= 0")
        return p

    def pair_loss(self, s: Any, chosen: torch.Tensor, rejected: torch.Tensor, n_c: torch.Tensor, n_r: torch.Tensor,
                  batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return simpo_loss(chosen, rejected, n_c, n_r, s.beta, s.gamma, s.sft_weight)


METHOD = SimPO
