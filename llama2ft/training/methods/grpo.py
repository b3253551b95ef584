"""GRPO (Shao et al. 2024) and its variants Dr. GRPO and DAPO, with TRL's definitions: each step samples
`num_generations` answers per prompt from the current policy (training/rollouts.py), scores them with the
rewards (training/rewards.py), normalises the rewards within each prompt's group into advantages and applies
the clipped policy loss; `beta` > 0 adds the KL to the model training starts from. The Trainer that runs it
is in training/grpo_trainer.py.

Written on the training skeleton rather than on TRL's GRPOTrainer: TRL renders and tokenizes prompt texts
itself (its chat template, or prompt + completion strings), so it cannot feed our templates' ids, which are
the ids chat sends; its own loop, collation and checkpoints would also bypass the skeleton's complete
checkpoints, stop signals and resume. The loss is TRL's term for term: tests/test_grpo.py compares it with
`trl.GRPOTrainer._compute_loss` on the same inputs.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Optional

import torch
from omegaconf import DictConfig

from llama2ft.data.pairs import prompt_turns
from llama2ft.data.prompt_rows import ANSWER_COLUMN, PROMPTS, PromptCollator, PromptRow
from llama2ft.evaluation.heldout import QA
from llama2ft.inference.sampling import GREEDY_BELOW, Sampling
from llama2ft.training import distributed
from llama2ft.training.grpo_trainer import ReferenceWeights, grpo_trainer_class, heldout_rewards
from llama2ft.training.method import Method, MethodData, MethodSettings
from llama2ft.training.model_setup import on_gpu, train_device
from llama2ft.training.rewards import REWARD_INPUTS, RewardSet, reward_problems
from llama2ft.training.rollouts import generation_problems, make_rollouts

LOSS_TYPES = ("grpo", "dr_grpo", "dapo")
SCALE_REWARDS = ("group", "batch", "none")


@dataclass
class GrpoSettings(MethodSettings):
    name: str = "grpo"
    # built-ins (chinese_answer, exact_match, repetition, overlong), file.py:function or package.module:function
    # (TRL's reward signature), or a reward model folder (method=rm)
    rewards: list[str] = field(default_factory=lambda: ["exact_match"])
    reward_weights: Optional[list[float]] = None  # one per reward (None: all 1.0)
    num_generations: int = 8  # answers sampled per prompt (a group); a step has batch size x this many
    max_new_tokens: int = 128  # an answer ends at EOS or here
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0: off
    loss_type: str = "dapo"  # grpo (per-answer mean) | dr_grpo (/ max_new_tokens) | dapo (/ the batch's tokens)
    beta: float = 0.0  # KL to the starting model (0: none, nothing extra computed)
    epsilon: float = 0.2  # clip range of the probability ratio: [1 - epsilon, 1 + epsilon_high]
    epsilon_high: Optional[float] = None  # None: epsilon (DAPO uses 0.28)
    num_iterations: int = 1  # optimizer steps per batch of answers (TRL's mu; > 1 makes the clip bite)
    scale_rewards: str = "group"  # group | batch | none: divide advantages by the group's or batch's std, or not
    reward_inputs: str = "text"  # text | messages: prompts and completions as TRL's standard or conversational format
    generation: str = "auto"  # auto (vLLM on a CUDA GPU when installed, else transformers) | transformers | vllm
    vllm_memory: float = 0.3  # GPU memory share for vLLM's engine beside the training


def sampling_of(s: Any) -> Sampling:
    """The sampling the rollouts use (no repetition penalty: the policy's own distribution is sampled)."""
    return Sampling(temperature=s.temperature, top_p=s.top_p, top_k=s.top_k, repetition_penalty=1.0,
                    max_new_tokens=s.max_new_tokens, do_sample=True)


def nanstd(x: torch.Tensor, dim: Optional[int] = None) -> torch.Tensor:
    """The standard deviation ignoring NaNs, with Bessel's correction (as TRL's `nanstd`)."""
    mean = torch.nanmean(x, dim=dim, keepdim=True)
    count = (~x.isnan()).sum(dim=dim, keepdim=True)
    var = torch.nanmean((x - mean) ** 2, dim=dim, keepdim=True) * count / (count - 1)
    return var.sqrt() if dim is None else var.sqrt().squeeze(dim)


def advantages(rewards: torch.Tensor, n: int, scale: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(advantages, whether the std is zero, each group's std) of N = groups x n rewards, grouped consecutively:
    each reward minus its group's mean, divided by the group's std (`group`), the batch's (`batch`) or nothing
    (`none`), + 1e-4; an unscored (NaN) reward gets 0 (TRL's advantages)."""
    grouped = rewards.view(-1, n)
    mean = torch.nanmean(grouped, dim=1).repeat_interleave(n)
    group_std = nanstd(grouped, dim=1)
    std = nanstd(rewards).expand_as(rewards) if scale == "batch" else group_std.repeat_interleave(n)
    adv = rewards - mean
    if scale != "none":
        adv = adv / (std + 1e-4)
    return torch.nan_to_num(adv, nan=0.0), torch.isclose(std, torch.zeros_like(std)), group_std


def rows_with_signal(adv: torch.Tensor, beta: float) -> Optional[torch.Tensor]:
    """The answers whose loss term can be nonzero, or None for all. Without the KL term an answer of advantage 0
    (its group all scored alike) adds exactly nothing to the loss or its gradient, so the Trainer skips its
    forward and backward: often half of a step's answers. Never empty (one row keeps the graph)."""
    if beta != 0.0:
        return None
    keep = torch.nonzero(adv != 0).squeeze(1)
    if len(keep) == len(adv):
        return None
    return keep if len(keep) else keep.new_zeros(1)


def grpo_loss(logps: torch.Tensor, old_logps: torch.Tensor, adv: torch.Tensor, mask: torch.Tensor, loss_type: str,
              epsilon_low: float, epsilon_high: float, beta: float = 0.0, ref_logps: Optional[torch.Tensor] = None,
              max_new_tokens: int = 1, tokens: Optional[torch.Tensor] = None,
              rows: Optional[int] = None) -> tuple[torch.Tensor, dict]:
    """The clipped policy loss of (N, T) per-token log-probs of the sampled answers (`mask`: their tokens)
    and (N,) advantages; `tokens`: DAPO's normaliser (the answer tokens of the step over the processes);
    `rows`: the answers of the batch when only those with a signal are given (`rows_with_signal`)."""
    rows = logps.size(0) if rows is None else rows
    ratio = torch.exp(logps - old_logps)
    clipped = torch.clamp(ratio, 1 - epsilon_low, 1 + epsilon_high)
    a = adv.unsqueeze(1)
    per_token = -torch.min(ratio * a, clipped * a)
    figures: dict[str, torch.Tensor] = {}
    m = mask.to(per_token.dtype)
    if beta != 0.0:
        d = ref_logps - logps
        # k3's estimate of the KL to the reference, times the probability ratio: the unbiased reverse-KL gradient
        # (TRL's use_bias_correction_kl, its default)
        kl = (torch.exp(d) - d - 1) * ratio
        per_token = per_token + beta * kl
        figures["kl"] = ((kl * m).sum() / m.sum().clamp(min=1.0)).detach()
    if loss_type == "grpo":
        loss = ((per_token * m).sum(-1) / m.sum(-1).clamp(min=1.0)).sum() / rows
    elif loss_type == "dr_grpo":
        loss = (per_token * m).sum() / (rows * max_new_tokens)
    elif loss_type == "dapo":
        loss = (per_token * m).sum() / (tokens if tokens is not None else m.sum()).clamp(min=1.0)
    else:
        raise ValueError(f"unknown GRPO loss_type {loss_type!r}; choose one of {', '.join(LOSS_TYPES)}")
    bitten = ((ratio < 1 - epsilon_low) & (a < 0)) | ((ratio > 1 + epsilon_high) & (a > 0))
    figures["clip_ratio"] = ((bitten * m).sum() / m.sum().clamp(min=1.0)).detach()
    return loss, figures


class GRPO(Method):
    name = "grpo"
    Settings = GrpoSettings
    rows = PROMPTS
    starts_from_sft = True
    fused_loss = False  # the loss reads sampled answers' log-probs, not next-token labels
    match_metric = "exact_match"

    def __init__(self) -> None:
        self.extra: dict[str, Any] = {}  # what the run's Trainer takes: rewards, rollouts, reference, ...

    # the Trainer's steps, stated here with the method's other definitions
    @staticmethod
    def sampling(s: Any) -> Sampling:
        return sampling_of(s)

    @staticmethod
    def advantages(s: Any, rewards: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return advantages(rewards, s.num_generations, s.scale_rewards)

    @staticmethod
    def signal_rows(s: Any, adv: torch.Tensor) -> Optional[torch.Tensor]:
        return rows_with_signal(adv, s.beta)

    @staticmethod
    def policy_loss(s: Any, logps: torch.Tensor, old_logps: torch.Tensor, adv: torch.Tensor, mask: torch.Tensor,
                    ref_logps: Optional[torch.Tensor], tokens: torch.Tensor, rows: int) -> tuple[torch.Tensor, dict]:
        return grpo_loss(logps, old_logps, adv, mask, s.loss_type, s.epsilon,
                         s.epsilon if s.epsilon_high is None else s.epsilon_high, s.beta, ref_logps, s.max_new_tokens,
                         tokens, rows)

    def problems(self, cfg: DictConfig) -> list[str]:
        m, p = cfg.method, []
        if m.loss_type not in LOSS_TYPES:
            p.append(f"method.loss_type={m.loss_type!r}: must be one of {', '.join(LOSS_TYPES)}")
        if m.scale_rewards not in SCALE_REWARDS:
            p.append(f"method.scale_rewards={m.scale_rewards!r}: must be one of {', '.join(SCALE_REWARDS)}")
        if m.reward_inputs not in REWARD_INPUTS:
            p.append(f"method.reward_inputs={m.reward_inputs!r}: must be one of {', '.join(REWARD_INPUTS)}")
        if m.num_generations < 2:
            p.append(f"method.num_generations={m.num_generations}: must be >= 2 (advantages compare the answers "
                     "to a prompt)")
        if m.num_iterations < 1:
            p.append(f"method.num_iterations={m.num_iterations}: must be >= 1")
        if m.beta < 0:
            p.append(f"method.beta={m.beta}: must be >= 0")
        if m.epsilon <= 0 or (m.epsilon_high is not None and m.epsilon_high <= 0):
            p.append("method.epsilon and method.epsilon_high: must be > 0")
        if m.temperature < GREEDY_BELOW:
            p.append(f"method.temperature={m.temperature}: must be >= {GREEDY_BELOW} (GRPO samples its answers; "
                     "a lower one is greedy)")
        if not 0 < m.vllm_memory < 1:
            p.append(f"method.vllm_memory={m.vllm_memory}: must be in (0, 1)")
        p += sampling_of(m).problems("method.")
        p += reward_problems(list(m.rewards), None if m.reward_weights is None else list(m.reward_weights),
                             m.max_new_tokens)
        p += generation_problems(m.generation, cfg.lora, on_gpu(cfg))
        if cfg.data.format != "dialogue":
            p.append(f"data.format={cfg.data.format!r} with method=grpo: GRPO reads prompts (a `prompt` column, or "
                     "dialogues whose last answer is the reference), not raw text")
        if cfg.data.packing:
            p.append("data.packing=true with method=grpo: prompts are not packed; set data.packing=false")
        return p

    def collator(self, tokenizer: Any, attention: str, cfg: DictConfig) -> Any:
        return PromptCollator(tokenizer.pad_token_id)

    def trainer_class(self) -> type:
        return grpo_trainer_class()

    def trainer_kwargs(self, cfg: DictConfig) -> dict:
        return {"method": self, "settings": cfg.method}

    def data(self, cfg: DictConfig, prepared: Any, tokenizer: Any) -> MethodData:
        """The rewards, checked against the rows before any model loads: the columns they need, and a first
        call on a few rows (a reference answer and an empty one) that finds a reward which raises, returns the
        wrong count or a NaN."""
        m = cfg.method
        rewards = RewardSet(list(m.rewards), None if m.reward_weights is None else list(m.reward_weights),
                            m.max_new_tokens, m.reward_inputs == "messages")
        sample = [*prepared.examples[:2]] or _first_rows(prepared.train, 2)
        columns = set().union(*(r.columns for r in sample)) if sample else set()
        files = cfg.data.eval_file or cfg.data.train_file
        rewards.check_columns(columns, str(files))
        if sample:
            rewards.try_on(sample, tokenizer)
        self.extra = {"rewards": rewards, "tokenizer": tokenizer, "cfg": cfg, "heldout": prepared.examples}
        return MethodData(prepared, prepared.train, prepared.eval, self.extra)

    def before_training(self, cfg: DictConfig, model: Any, data: MethodData) -> MethodData:
        m, device = cfg.method, train_device(cfg)
        self.extra["rewards"].load(device)
        self.extra["reference"] = ReferenceWeights(model) if m.beta != 0.0 else None
        base = getattr(getattr(model, "peft_config", {}).get("default"), "base_model_name_or_path", None)
        self.extra["rollouts"] = make_rollouts(m.generation, model, self.extra["tokenizer"], cfg.lora,
                                               base or model.config._name_or_path, on_gpu(cfg), m.vllm_memory)
        return data

    def questions(self, cfg: DictConfig, data: MethodData, limit: int) -> list[QA]:
        rows = [r for r in data.prepared.examples if ANSWER_COLUMN in r.columns]
        return [QA(list(r.turns), str(r.columns[ANSWER_COLUMN])) for r in rows[:limit]]

    def evaluate(self, cfg: DictConfig, model: Any, data: MethodData, when: str) -> dict[str, float]:
        """The mean reward of greedy answers to the held-out prompts, in total and per reward, printed."""
        rows: list[PromptRow] = data.prepared.examples[: cfg.sample_eval.max_questions]
        if not rows or not distributed.is_main_process():
            return {}
        figures = heldout_rewards(model, self.extra["tokenizer"], cfg, self.extra["rewards"], rows)
        parts = ", ".join(f"{k.split('/', 1)[1]} {v:.3f}" for k, v in figures.items() if k.startswith("reward/"))
        print(f"\nheld-out reward {when}: {figures['reward']:.3f} ({parts}) on {len(rows)} prompts, greedy answers",
              flush=True)
        return figures

    def final_metrics(self, log_history: list[dict]) -> dict[str, Any]:
        """The training rewards and generation figures of the last training log."""
        last = next((h for h in reversed(log_history) if "reward" in h), {})
        return {f"train_{k}": v for k, v in last.items()
                if k.startswith("reward") or k in ("completion_length", "generation_share", "generation_tokens_per_s")}


def _first_rows(dataset: Any, n: int) -> list[PromptRow]:
    """PromptRows of the first rows of an encoded split (when nothing is held out), for the reward check."""
    chunk = dataset[:n]
    return [PromptRow(prompt_turns(p), p, json.loads(c)) for p, c in zip(chunk["prompt"], chunk["columns"])]


METHOD = GRPO
