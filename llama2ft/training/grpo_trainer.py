"""The Trainer of GRPO (training/methods/grpo.py): each micro-batch of prompts is answered
`num_generations` times by the policy as it is now, scored, turned into advantages and trained on with the
clipped policy loss. With `num_iterations` = mu > 1 the sampler repeats each step's window of prompts mu
times, and the answers sampled the first time are reused (with their log-probs then) for the next mu - 1
optimizer steps, as TRL does. Also: the held-out reward of greedy answers (evaluation), the starting
model's weights for the KL term, and a sample of the answers of each logging step (completions.jsonl).
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Iterator, Optional

import torch
import torch.nn.functional as F

from llama2ft.data.prompt_rows import PromptCollator, PromptRow, prompt_ids_of
from llama2ft.data.templates import get_template
from llama2ft.inference.sampling import Sampling
from llama2ft.model.run_folder import RunDir
from llama2ft.training import distributed
from llama2ft.training.figures import figures_trainer_class
from llama2ft.training.rewards import RewardSet, batch_of
from llama2ft.training.rollouts import Rollout, TransformersRollouts


def completion_logps(model: Any, roll: Rollout, temperature: float) -> torch.Tensor:
    """(N, C) log-probs of each sampled answer token under `model`, at the sampling temperature (as TRL).
    Positions count from each row's first prompt token, as in generation with left padding."""
    ids = torch.cat([roll.prompt_ids, roll.completion_ids], dim=1)
    mask = torch.cat([roll.prompt_mask, roll.completion_mask], dim=1)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    width = roll.completion_ids.shape[1]
    logits = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=False,
                   logits_to_keep=width + 1).logits[:, :-1]
    logps = F.log_softmax(logits.float() / temperature, dim=-1)
    return torch.gather(logps, 2, roll.completion_ids.unsqueeze(-1)).squeeze(-1)


class ReferenceWeights:
    """The trainable weights of the model as training starts (a fresh or continued adapter, the modules
    trained in full, or the whole model with lora=full): swapped in for the KL term's forward pass, so the
    reference is exactly the starting model without a second copy of the frozen base."""

    def __init__(self, model: Any):
        self.saved = [(p, p.detach().clone()) for p in model.parameters() if p.requires_grad]

    @torch.no_grad()
    def logps(self, model: Any, roll: Rollout, temperature: float) -> torch.Tensor:
        current = [p.detach().clone() for p, _ in self.saved]
        for p, ref in self.saved:
            p.copy_(ref)
        try:
            return completion_logps(model, roll, temperature)
        finally:
            for (p, _), now in zip(self.saved, current):
                p.copy_(now)


class RepeatedWindows(torch.utils.data.Sampler):
    """The base sampler's order, in windows of one optimizer step's prompts (over every process), each window
    yielded `times` times in a row; an incomplete last window is dropped."""

    def __init__(self, base: Any, window: int, times: int):
        self.base, self.window, self.times = base, window, times

    def __iter__(self) -> Iterator[int]:
        order = list(self.base)
        for start in range(0, len(order) - self.window + 1, self.window):
            for _ in range(self.times):
                yield from order[start:start + self.window]

    def __len__(self) -> int:
        return len(self.base) // self.window * self.window * self.times


def heldout_rewards(model: Any, tokenizer: Any, cfg: Any, rewards: RewardSet, rows: list[PromptRow]) -> dict:
    """The mean reward (total and per reward) of greedy answers to `rows`, as the rollouts generate them."""
    m, bs = cfg.method, cfg.trainer.per_device_eval_batch_size
    template = get_template(cfg.template.name, cfg.template.system)
    ids = prompt_ids_of(template, tokenizer, rows)
    collate, rollouts = PromptCollator(tokenizer.pad_token_id), TransformersRollouts(model, tokenizer)
    greedy = Sampling(do_sample=False, repetition_penalty=1.0, max_new_tokens=m.max_new_tokens)
    device = next(model.parameters()).device
    scores = []
    for start in range(0, len(rows), bs):
        chunk = rows[start:start + bs]
        batch = collate([{"prompt_ids": i, "prompt": r.prompt, "columns": "{}"} for i, r in zip(ids[start:], chunk)])
        roll = rollouts.generate(model, batch["input_ids"].to(device), batch["attention_mask"].to(device), 1, greedy, 0)
        scores.append(rewards.score(batch_of(chunk, 1, roll.texts, roll.ids_list(), _no_trainer())))
    per = torch.cat(scores)
    out = {"reward": float(torch.nanmean(rewards.total(per)))}
    out.update({f"reward/{name}": float(torch.nanmean(per[:, j])) for j, name in enumerate(rewards.names)})
    return out


def _no_trainer() -> dict:
    return {"trainer_state": None, "log_metric": lambda *a: None, "log_extra": lambda *a: None}


def grpo_trainer_class() -> type:
    """Built lazily (transformers imports slowly). The loss, advantages and sampling are the method's
    (`method.policy_loss`, `method.advantages`, `method.sampling`), stated in its file."""

    class GrpoTrainer(figures_trainer_class()):  # type: ignore[misc]
        def __init__(self, *args: Any, method: Any, settings: Any, **kwargs: Any):
            super().__init__(*args, **kwargs)
            self.method, self.settings = method, settings
            self.cfg = method.extra["cfg"]
            self.rewards: RewardSet = method.extra["rewards"]
            self.reference: Optional[ReferenceWeights] = method.extra["reference"]
            self.rollouts = method.extra["rollouts"]
            self.loss_is_scaled_for_ga = False  # a micro-batch's mean loss: the Trainer divides by the accumulation
            self._kept: dict[int, tuple] = {}  # micro-batch position in the step -> its answers (num_iterations > 1)
            self._micro = 0
            self._generation_seconds = 0.0
            self._extra_columns: dict[str, list] = {}

        def _get_train_sampler(self, train_dataset: Any = None) -> Any:
            base = super()._get_train_sampler(train_dataset)
            s = self.settings
            if s.num_iterations == 1 or base is None:
                return base
            window = self.args.per_device_train_batch_size * self.args.gradient_accumulation_steps * \
                distributed.world_size()
            return RepeatedWindows(base, window, s.num_iterations)

        def training_step(self, model: Any, inputs: dict, num_items_in_batch: Any = None) -> torch.Tensor:
            started, self._generation_seconds = time.perf_counter(), 0.0
            loss = super().training_step(model, inputs, num_items_in_batch)
            self.record({"generation_share": self._generation_seconds / (time.perf_counter() - started)}, True)
            return loss

        def compute_loss(self, model: Any, inputs: dict, return_outputs: bool = False,
                         num_items_in_batch: Any = None) -> Any:
            s = self.settings
            roll, adv, old, ref = self._answers(model, inputs)
            tokens, rows = torch.tensor(float(roll.tokens), device=adv.device), len(adv)
            if torch.distributed.is_available() and torch.distributed.is_initialized():
                torch.distributed.all_reduce(tokens)
                tokens = tokens / distributed.world_size()
            keep = self.method.signal_rows(s, adv)
            if keep is not None:  # the answers that add nothing are not run (the normalisers count them)
                roll, adv = roll.select(keep), adv[keep]
                old, ref = (None if t is None else t[keep] for t in (old, ref))
            logps = completion_logps(model, roll, s.temperature)
            loss, figures = self.method.policy_loss(s, logps, logps.detach() if old is None else old, adv,
                                                    roll.completion_mask, ref, tokens, rows)
            self.record(figures, model.training)
            return (loss, {"loss": loss}) if return_outputs else loss

        def _answers(self, model: Any, inputs: dict) -> tuple:
            """This micro-batch's answers, advantages and log-probs: sampled now, or kept from the step that
            sampled them (num_iterations > 1)."""
            s, accumulation = self.settings, self.args.gradient_accumulation_steps
            position, iteration = self._micro % accumulation, (self._micro // accumulation) % s.num_iterations
            self._micro += 1
            if iteration and position in self._kept:
                return self._kept[position]
            unwrapped = self.accelerator.unwrap_model(model)
            seed = (self.args.seed * 1_000_003 + self.state.global_step * 1009 + position * 31
                    + distributed.rank()) % 2**31
            roll = self.rollouts.generate(unwrapped, inputs["input_ids"], inputs["attention_mask"],
                                          s.num_generations, self.method.sampling(s), seed)
            self._generation_seconds += roll.seconds
            device = inputs["input_ids"].device
            roll.completion_ids, roll.completion_mask = roll.completion_ids.to(device), roll.completion_mask.to(device)
            rows = [PromptRow(t, p, c) for t, p, c in zip(inputs["turns"], inputs["prompt"], inputs["columns"])]
            extra = {"trainer_state": self.state, "log_metric": self._log_metric, "log_extra": self._log_extra}
            batch = batch_of(rows, s.num_generations, roll.texts, roll.ids_list(), extra)
            per = self.rewards.score(batch)
            total = self.rewards.total(per)
            adv, zero_std, group_std = self.method.advantages(s, total)
            with torch.no_grad():
                old = completion_logps(model, roll, s.temperature) if s.num_iterations > 1 else None
                ref = self.reference.logps(model, roll, s.temperature) if self.reference is not None else None
            lengths = roll.completion_mask.sum(1).float()
            self.record({"reward": torch.nanmean(total), "reward_std": torch.nan_to_num(torch.nanmean(group_std)),
                         **{f"reward/{n}": torch.nanmean(per[:, j]) for j, n in enumerate(self.rewards.names)},
                         "frac_reward_zero_std": zero_std.float().mean(), "completion_length": lengths.mean(),
                         "truncated": roll.truncated.float().mean(),
                         "generation_tokens_per_s": roll.tokens / max(roll.seconds, 1e-9)}, True)
            if position == 0 and (self.state.global_step + 1) % self.args.logging_steps == 0:
                self._sample_log(batch, per, adv)
            self._extra_columns = {}
            kept = (roll, adv.to(device), old, ref)
            if s.num_iterations > 1:
                self._kept[position] = kept
            return kept

        def _log_metric(self, name: str, value: float) -> None:
            self.record({name: value}, True)

        def _log_extra(self, column: str, values: list) -> None:
            self._extra_columns[column] = list(values)

        def _sample_log(self, batch: Any, per: torch.Tensor, adv: torch.Tensor) -> None:
            """The first prompt's answers with their rewards (a logging step's sample) into completions.jsonl."""
            step, n = self.state.global_step + 1, self.settings.num_generations
            if not distributed.is_main_process():
                return
            rows = [{"step": step, "prompt": batch.prompts[k], "completion": batch.completions[k],
                     "rewards": {name: _float(per[k, j]) for j, name in enumerate(self.rewards.names)},
                     "advantage": round(float(adv[k]), 4),
                     **{c: v[k] for c, v in self._extra_columns.items() if k < len(v)}} for k in range(n)]
            # the run folder holds the Trainer's checkpoints/ (training/arguments.py); a resume trims this file
            # with log.jsonl (RunDir.trim_log)
            with RunDir(Path(self.args.output_dir).parent).completions.open("a", encoding="utf-8") as f:
                for row in rows:
                    f.write(json.dumps(row, ensure_ascii=False) + "\n")

        def evaluate(self, eval_dataset: Any = None, ignore_keys: Any = None, metric_key_prefix: str = "eval") -> dict:
            """The held-out reward of greedy answers (the Trainer's evaluation of GRPO: no loss to evaluate)."""
            model = self.accelerator.unwrap_model(self.model)
            rows = self.method.extra["heldout"][: self.cfg.sample_eval.max_questions]
            metrics = {}
            if rows and distributed.is_main_process():
                was_training = model.training
                figures = heldout_rewards(model, self.processing_class, self.cfg, self.rewards, rows)
                model.train(was_training)
                metrics = {f"{metric_key_prefix}_{k}": v for k, v in figures.items()}
                self.log(metrics)
            self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
            return metrics

    return GrpoTrainer


def _float(x: torch.Tensor) -> Optional[float]:
    value = float(x)
    return None if value != value else round(value, 4)
