"""KTO (Ethayarajh et al. 2024): unpaired completions labelled desirable or not. Each completion's reward
is beta x its log-prob gain over the reference (the starting model, scored once); desirable ones are
pushed above the KL reference point z0 and undesirable ones below it, z0 being the batch's mean policy/
reference KL on mismatched prompt-completion rows (clamped at 0, no gradient). Rows: prompt, completion,
label; a pairs file gives each prompt's chosen answer as desirable and its rejected one as undesirable."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch
from omegaconf import DictConfig

from llama2ft.data.pair_encode import COMPLETIONS, CompletionCollator
from llama2ft.evaluation.heldout import QA
from llama2ft.training import distributed
from llama2ft.training.method import MethodData, MethodSettings
from llama2ft.training.model_setup import train_device
from llama2ft.training.preference import (PreferenceMethod, all_logps, reference_logps, row_logps,
                                          with_columns)


@dataclass
class KtoSettings(MethodSettings):
    name: str = "kto"
    beta: float = 0.1  # scale of the reward (higher: stays closer to the reference)
    desirable_weight: float = 1.0  # the paper keeps desirable_weight x #desirable / (undesirable_weight x
    undesirable_weight: float = 1.0  # #undesirable) in [1, 4/3]: raise the rarer kind's weight
    sft_weight: float = 0.0  # plus this weight x a desirable completion's mean token NLL (keeps it likely)


def kto_loss(logps: torch.Tensor, ref_logps: torch.Tensor, desirable: torch.Tensor, kl: torch.Tensor, beta: float,
             desirable_weight: float = 1.0, undesirable_weight: float = 1.0, lengths: Optional[torch.Tensor] = None,
             sft_weight: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-completion KTO loss and rewards beta * (logps - ref_logps); `kl`: the reference point z0.
    `sft_weight` adds that weight times each desirable completion's mean token NLL (`lengths`: its tokens)."""
    logr = logps - ref_logps
    z0 = kl.detach().clamp(min=0)
    loss = torch.where(desirable, desirable_weight * (1 - torch.sigmoid(beta * (logr - z0))),
                       undesirable_weight * (1 - torch.sigmoid(beta * (z0 - logr))))
    if sft_weight:
        loss = loss + sft_weight * torch.where(desirable, -logps / lengths, torch.zeros_like(logps))
    return loss, beta * logr.detach()


def batch_kl(kl_logps: torch.Tensor, ref_kl_logps: torch.Tensor) -> torch.Tensor:
    """The mean policy/reference log-ratio of the mismatched rows, over every process's batch."""
    total = torch.stack([(kl_logps - ref_kl_logps).sum(), torch.tensor(float(len(kl_logps))).to(kl_logps)])
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(total)
    return total[0] / total[1]


class KTO(PreferenceMethod):
    name = "kto"
    Settings = KtoSettings
    rows = COMPLETIONS
    needs_reference = True
    logged = ("kl",)

    def problems(self, cfg: DictConfig) -> list[str]:
        p, m = super().problems(cfg), cfg.method
        for key in ("desirable_weight", "undesirable_weight"):
            if m[key] <= 0:
                p.append(f"method.{key}={m[key]}: must be > 0")
        if m.sft_weight < 0:
            p.append(f"method.sft_weight={m.sft_weight}: must be >= 0")
        return p

    def collator(self, tokenizer: Any, attention: str, cfg: DictConfig) -> Any:
        return CompletionCollator(tokenizer.pad_token_id)

    def batch_loss(self, model: Any, batch: dict, s: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        b, keys = batch["desirable"].shape[0], ("input_ids", "attention_mask", "labels")
        with torch.no_grad():  # the reference point carries no gradient: score the mismatched rows without one
            kl_logps = row_logps(model, {k: batch[k][b:] for k in keys})[0]
        logps, lengths = row_logps(model, {k: batch[k][:b] for k in keys})
        kl = batch_kl(kl_logps, batch["ref_kl_logps"].to(kl_logps))
        desirable = batch["desirable"].to(logps.device)
        loss, rewards = kto_loss(logps, batch["ref_logps"].to(logps), desirable, kl, s.beta, s.desirable_weight,
                                 s.undesirable_weight, lengths, s.sft_weight)
        good, bad = rewards[desirable], rewards[~desirable]
        figures = {"kl": kl.detach()}
        if len(good):
            figures["rewards/chosen"] = good.mean()
        if len(bad):
            figures["rewards/rejected"] = bad.mean()
        if len(good) and len(bad):  # desirable above undesirable on average (unpaired: no per-pair accuracy)
            figures["rewards/margins"] = good.mean() - bad.mean()
        return loss.mean(), figures

    def before_training(self, cfg: DictConfig, model: Any, data: MethodData) -> MethodData:
        collator, bs = CompletionCollator(0), cfg.trainer.per_device_eval_batch_size
        for split in ("train", "eval"):
            dataset = getattr(data, split)
            if dataset is not None:
                refs = reference_logps(model, dataset, collator, bs, train_device(cfg))
                setattr(data, split, with_columns(dataset, {"ref_logps": [a for a, _ in refs],
                                                            "ref_kl_logps": [k for _, k in refs]}))
        return data

    def questions(self, cfg: DictConfig, data: MethodData, limit: int) -> list[QA]:
        return [QA(list(c.turns), c.completion) for c in data.prepared.examples if c.desirable][:limit]

    def evaluate(self, cfg: DictConfig, model: Any, data: MethodData, when: str) -> dict[str, float]:
        """The share of held-out completions whose reward has their label's sign (desirable: gained
        log-probability over the reference; undesirable: lost some), printed."""
        if data.eval is None or not distributed.is_main_process():
            return {}
        logps = all_logps(model, data.eval, CompletionCollator(0), cfg.trainer.per_device_eval_batch_size)
        # a tie (as at the start, where the model is the reference) counts as wrong for either label
        right = [lp - ref > 0 if d else lp - ref < 0 for (lp, _, _, _), ref, d in
                 zip(logps, data.eval["ref_logps"], data.eval["desirable"])]
        acc = sum(right) / len(right)
        print(f"\nreward accuracy {when}: {acc:.0%} on {len(right)} held-out completions (desirable ones gain "
              "log-probability over the reference, undesirable ones lose it)", flush=True)
        return {"reward_accuracy": acc}


METHOD = KTO
