"""A reward model (Bradley-Terry, as in InstructGPT; TRL's RewardTrainer is the definition matched) on the
prompt/chosen/rejected pairs DPO reads: a sequence-classification Llama with one output, LoRA on the body
and its `score` head trained in full, learning score(chosen) > score(rejected). The scores are read at the
last token of prompt + answer (the answer's EOS). `training/reward_model.py` loads a finished one to score
answers (GRPO's reward model); `llama2ft-merge` writes it as a stock AutoModelForSequenceClassification folder.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch
import torch.nn.functional as F
from omegaconf import DictConfig

from llama2ft.data.pair_encode import PairCollator
from llama2ft.evaluation.heldout import QA
from llama2ft.training import distributed
from llama2ft.training.method import MethodData, MethodSettings
from llama2ft.training.preference import PairMethod, all_logps, reward_figures
from llama2ft.training.reward_model import sequence_scores


@dataclass
class RmSettings(MethodSettings):
    name: str = "rm"
    # TRL's center_rewards_coefficient: plus this x mean((r_chosen + r_rejected)^2), keeping scores near 0
    # (Eisenstein et al. 2023 recommend 0.01); None: off
    center_rewards_coefficient: Optional[float] = None


def reward_loss(chosen: torch.Tensor, rejected: torch.Tensor,
                center_rewards_coefficient: Optional[float] = None) -> torch.Tensor:
    """Per-pair Bradley-Terry loss -log sigmoid(r_chosen - r_rejected), plus TRL's centring term; its mean is
    TRL RewardTrainer's loss on the same scores."""
    loss = -F.logsigmoid(chosen - rejected)
    if center_rewards_coefficient is not None:
        loss = loss + center_rewards_coefficient * (chosen + rejected) ** 2
    return loss


def halves_scores(model: Any, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """The scores of a batch of 2B rows (chosen rows, then rejected), in one forward pass."""
    scores = sequence_scores(model, batch)
    return scores[:scores.shape[0] // 2], scores[scores.shape[0] // 2:]


class RewardModeling(PairMethod):
    name = "rm"
    Settings = RmSettings
    scorer = True
    preference_rule = "chosen scores higher than rejected"

    def problems(self, cfg: DictConfig) -> list[str]:
        p, c = self.row_problems(cfg), cfg.method.center_rewards_coefficient
        if c is not None and c < 0:
            p.append(f"method.center_rewards_coefficient={c}: must be >= 0 (or null: off)")
        return p

    def batch_loss(self, model: Any, batch: dict, settings: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        chosen, rejected = halves_scores(model, batch)
        loss = reward_loss(chosen, rejected, settings.center_rewards_coefficient)
        return loss.mean(), reward_figures(chosen.detach(), rejected.detach())

    def questions(self, cfg: DictConfig, data: MethodData, limit: int) -> list[QA]:
        return []  # a reward model writes no answers

    def evaluate(self, cfg: DictConfig, model: Any, data: MethodData, when: str) -> dict[str, float]:
        """The share of held-out pairs whose chosen answer scores higher, printed."""
        if data.eval is None or not distributed.is_main_process():
            return {}
        collator = PairCollator(model.config.pad_token_id)  # padding is what the score head skips
        scores = all_logps(model, data.eval, collator, cfg.trainer.per_device_eval_batch_size, of=halves_scores)
        acc = sum(c > r for c, r in scores) / len(scores)
        margin = sum(c - r for c, r in scores) / len(scores)
        print(f"\npreference accuracy {when}: {acc:.0%} on {len(scores)} held-out pairs ({self.preference_rule}); "
              f"mean score margin {margin:+.3f}", flush=True)
        return {"preference_accuracy": acc, "reward_margin": margin}


METHOD = RewardModeling
