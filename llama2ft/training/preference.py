"""What the preference methods share: answer log-probs of a batch, the Trainer that optimises a method's
loss and logs its rewards, the reference log-probs computed once before training, and `PairMethod`, the
base of the methods on prompt/chosen/rejected pairs (DPO, ORPO, SimPO; KTO reads single completions).

Written here rather than taken from TRL 1.16: its trainers tokenize prompt and answer texts themselves
(there is no path for our template's ids), replace the model's `forward` with a fused-head one, and ORPO
is only in `trl.experimental`. A reference (DPO, KTO) is the model training starts from, with its
log-probs computed once: no second copy of the model is held, and it is right for every start — a
fresh adapter, an SFT adapter that keeps training (where disabling the adapter would give the raw base,
not the SFT model), or full fine-tuning.
"""
from __future__ import annotations

import time
from typing import Any, Callable, Optional

import torch
from omegaconf import DictConfig

from llama2ft.data.pair_encode import PAIRS, PairCollator
from llama2ft.data.templates import IGNORE_INDEX
from llama2ft.evaluation.heldout import QA
from llama2ft.model.loading import quantized_layers
from llama2ft.training import distributed
from llama2ft.training.figures import figures_trainer_class
from llama2ft.training.method import Method, MethodData
from llama2ft.training.model_setup import train_device


def sequence_logps(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed log-probability of each row's labelled tokens (next-token shift applied), and their count."""
    logits, labels = logits[:, :-1].float(), labels[:, 1:]
    scored = labels != IGNORE_INDEX
    token_logps = torch.gather(logits.log_softmax(-1), 2, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return (token_logps * scored).sum(-1), scored.sum(-1)


def row_logps(model: Any, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed answer log-probs and answer lengths of each row of a padded batch, in one forward pass."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).logits
    return sequence_logps(logits, batch["labels"])


def halves_logps(model: Any, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, ...]:
    """(first logps, second logps, first lengths, second lengths) of a batch of 2B rows (chosen then
    rejected; completions then their KL rows), in one forward pass."""
    logps, counts = row_logps(model, batch)
    b = logps.shape[0] // 2
    return logps[:b], logps[b:], counts[:b], counts[b:]


def rows(dataset: Any, start: int, end: int) -> list[dict]:
    """Rows start..end of a datasets.Dataset (or a list) as dicts."""
    chunk = dataset[start:end]
    if isinstance(chunk, dict):
        return [dict(zip(chunk, values)) for values in zip(*chunk.values())]
    return list(chunk)


@torch.no_grad()
def all_logps(model: Any, dataset: Any, collator: Any, batch_size: int,
              of: Callable[[Any, dict], tuple[torch.Tensor, ...]] = halves_logps) -> list[tuple[float, ...]]:
    """`of` (by default `halves_logps`) of every example, in eval mode, in order."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    out: list[tuple[float, ...]] = []
    try:
        for start in range(0, len(dataset), batch_size):
            batch = {k: v.to(device) for k, v in collator(rows(dataset, start, start + batch_size)).items()}
            out += list(zip(*(t.tolist() for t in of(model, batch))))
    finally:
        model.train(was_training)
    return out


def reference_logps(model: Any, dataset: Any, collator: Any, batch_size: int,
                    device: torch.device) -> list[tuple[float, float]]:
    """(first, second) summed answer log-probs of every example under `model` as it is now, in order.
    Each process scores its share and all of them receive every score."""
    if not len(dataset):
        return []
    if not quantized_layers(model):  # a quantized model was loaded onto its device already
        model.to(device)
    world, rank = distributed.world_size(), distributed.rank()
    mine = all_logps(model, dataset.select(range(rank, len(dataset), world)) if hasattr(dataset, "select")
                     else dataset[rank::world], collator, batch_size)
    shares: list[Any] = [mine]
    if world > 1 and torch.distributed.is_initialized():
        shares = [None] * world
        torch.distributed.all_gather_object(shares, mine)
    out: list[tuple[float, float]] = [(0.0, 0.0)] * len(dataset)
    for r, share in enumerate(shares):
        for k, (first, second, _, _) in enumerate(share):
            out[r + k * world] = (first, second)
    return out


def with_columns(dataset: Any, columns: dict[str, list]) -> Any:
    for name, values in columns.items():
        dataset = dataset.add_column(name, values)
    return dataset


def preference_trainer_class() -> type:
    """The Trainer of the preference methods: `compute_loss` is the method's loss, its figures (rewards, ...)
    logged with the loss (training/figures.py)."""

    class PreferenceTrainer(figures_trainer_class()):  # type: ignore[misc]
        def __init__(self, *args: Any, method: "PreferenceMethod", settings: Any, **kwargs: Any):
            super().__init__(*args, **kwargs)
            self.method, self.settings = method, settings

        def compute_loss(self, model: Any, inputs: dict, return_outputs: bool = False,
                         num_items_in_batch: Any = None) -> Any:
            loss, figures = self.method.batch_loss(model, inputs, self.settings)
            self.record(figures, model.training)
            return (loss, {"loss": loss}) if return_outputs else loss

    return PreferenceTrainer


def reward_figures(chosen: torch.Tensor, rejected: torch.Tensor) -> dict[str, torch.Tensor]:
    return {"rewards/chosen": chosen.mean(), "rewards/rejected": rejected.mean(),
            "rewards/margins": (chosen - rejected).mean(), "rewards/accuracies": (chosen > rejected).float().mean()}


class PreferenceMethod(Method):
    """A method optimised by the PreferenceTrainer: `batch_loss` gives a batch's mean loss and figures."""

    match_metric = "chosen_match"
    starts_from_sft = True
    fused_loss = False  # the losses read answer log-probs, not next-token labels
    needs_reference = False  # the starting model's log-probs are scored once before training

    def problems(self, cfg: DictConfig) -> list[str]:
        p = self.row_problems(cfg)
        if cfg.method.beta <= 0:
            p.append(f"method.beta={cfg.method.beta}: must be > 0")
        return p

    def row_problems(self, cfg: DictConfig) -> list[str]:
        """What the data settings must be for rows of prompt and answer columns."""
        p = []
        if cfg.data.format != "dialogue":
            p.append(f"data.format={cfg.data.format!r} with method={self.name}: preference rows are prompt and "
                     "answer columns, not raw text")
        if cfg.data.packing:
            p.append(f"data.packing=true with method={self.name}: preference rows are not packed; "
                     "set data.packing=false")
        return p

    def trainer_class(self) -> type:
        return preference_trainer_class()

    def trainer_kwargs(self, cfg: DictConfig) -> dict:
        return {"method": self, "settings": cfg.method}

    def batch_loss(self, model: Any, batch: dict, settings: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        raise NotImplementedError

    logged: tuple[str, ...] = ()  # figures of its loss (besides rewards/*) kept in metrics.json

    def final_metrics(self, log_history: list[dict]) -> dict[str, Any]:
        """The rewards (and the method's own figures) of the last training log."""
        last = next((h for h in reversed(log_history) if "rewards/margins" in h), {})
        return {k: v for k, v in last.items() if k.startswith("rewards/") or k in self.logged}


class PairMethod(PreferenceMethod):
    """A method on prompt/chosen/rejected pairs: `pair_loss` of the summed answer log-probs."""

    rows = PAIRS

    def collator(self, tokenizer: Any, attention: str, cfg: DictConfig) -> Any:
        return PairCollator(tokenizer.pad_token_id)

    def pair_loss(self, s: Any, chosen: torch.Tensor, rejected: torch.Tensor, n_c: torch.Tensor, n_r: torch.Tensor,
                  batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Per-pair loss, and at least the rewards {"chosen", "rejected"} (more entries are logged too)."""
        raise NotImplementedError

    def batch_loss(self, model: Any, batch: dict, settings: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        chosen, rejected, n_c, n_r = halves_logps(model, batch)
        loss, r = self.pair_loss(settings, chosen, rejected, n_c, n_r, batch)
        extra = {k: v.mean() for k, v in r.items() if k not in ("chosen", "rejected")}
        return loss.mean(), {**reward_figures(r["chosen"], r["rejected"]), **extra}

    def prefers(self, c: float, r: float, nc: float, nr: float, ref: Optional[tuple[float, float]]) -> bool:
        """Whether the model prefers the chosen answer: by default the higher per-token log-probability."""
        return c / nc > r / nr

    def before_training(self, cfg: DictConfig, model: Any, data: MethodData) -> MethodData:
        if not self.needs_reference:
            return data
        started, collator, bs = time.time(), PairCollator(0), cfg.trainer.per_device_eval_batch_size
        refs = {}
        for split in ("train", "eval"):
            dataset = getattr(data, split)
            if dataset is not None:
                refs[split] = reference_logps(model, dataset, collator, bs, train_device(cfg))
                setattr(data, split, with_columns(dataset, {"ref_chosen": [c for c, _ in refs[split]],
                                                            "ref_rejected": [r for _, r in refs[split]]}))
        distributed.say(f"reference log-probs of {sum(map(len, refs.values()))} pairs in {time.time() - started:.1f} s "
                        "(the starting model; no second copy is kept)")
        data.extra["refs_eval"] = refs.get("eval")
        return data

    def questions(self, cfg: DictConfig, data: MethodData, limit: int) -> list[QA]:
        return [QA(list(p.turns), p.chosen, p.rejected) for p in data.prepared.examples[:limit]]

    def evaluate(self, cfg: DictConfig, model: Any, data: MethodData, when: str) -> dict[str, float]:
        """Preference accuracy (and plain likelihood accuracy) on the held-out pairs, printed."""
        if data.eval is None or not distributed.is_main_process():
            return {}
        logps = all_logps(model, data.eval, PairCollator(0), cfg.trainer.per_device_eval_batch_size)
        refs = data.extra.get("refs_eval") or [None] * len(logps)
        acc = sum(self.prefers(c, r, nc, nr, ref) for (c, r, nc, nr), ref in zip(logps, refs)) / len(logps)
        lik = sum(c > r for c, r, _, _ in logps) / len(logps)
        print(f"\npreference accuracy {when}: {acc:.0%} on {len(logps)} held-out pairs ({self.preference_rule}); "
              f"chosen more likely than rejected: {lik:.0%}", flush=True)
        return {"preference_accuracy": acc, "likelihood_accuracy": lik}

    preference_rule = "chosen has the higher per-token log-probability"
