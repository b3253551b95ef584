"""DPO (Rafailov et al. 2023) and its variants IPO (Azar et al. 2023) and hinge (SLiC), on prompt/chosen/
rejected pairs, against the model training starts from (its log-probs scored once before training)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch
import torch.nn.functional as F
from omegaconf import DictConfig

from llama2ft.training.method import MethodSettings
from llama2ft.training.preference import PairMethod

DPO_LOSS_TYPES = ("sigmoid", "ipo", "hinge")


@dataclass
class DpoSettings(MethodSettings):
    name: str = "dpo"
    beta: float = 0.1  # pull towards the reference (higher: stays closer)
    loss_type: str = "sigmoid"  # sigmoid (DPO) | ipo | hinge
    label_smoothing: float = 0.0  # sigmoid: the share of pairs assumed mislabelled (conservative DPO)
    sft_weight: float = 0.0  # plus this weight x the chosen answer's token NLL (RPO): keeps chosen likely


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


class DPO(PairMethod):
    name = "dpo"
    Settings = DpoSettings
    needs_reference = True
    preference_rule = "chosen gains more log-probability over the reference than rejected"

    def problems(self, cfg: DictConfig) -> list[str]:
        p, m = super().problems(cfg), cfg.method
        if m.loss_type not in DPO_LOSS_TYPES:
            p.append(f"method.loss_type={m.loss_type!r}: must be one of {', '.join(DPO_LOSS_TYPES)}")
        if m.sft_weight < 0:
            p.append(f"method.sft_weight={m.sft_weight}: must be >= 0")
        if not 0 <= m.label_smoothing < 0.5:
            p.append(f"method.label_smoothing={m.label_smoothing}: must be in [0, 0.5)")
        return p

    def pair_loss(self, s: Any, chosen: torch.Tensor, rejected: torch.Tensor, n_c: torch.Tensor, n_r: torch.Tensor,
                  batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return dpo_loss(chosen, rejected, batch["ref_chosen"].to(chosen), batch["ref_rejected"].to(chosen), s.beta,
                        s.loss_type, s.label_smoothing, n_c, n_r, s.sft_weight)

    def prefers(self, c: float, r: float, nc: float, nr: float, ref: Optional[tuple[float, float]]) -> bool:
        """A larger log-prob gain over the reference (a tie, as at the start where the model is the
        reference, counts as not preferring)."""
        return (c - ref[0]) > (r - ref[1])


METHOD = DPO
