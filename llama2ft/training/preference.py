"""Preference losses (DPO and its variants, ORPO) and the Trainer that optimises them.

Written here rather than taken from TRL 1.16: its DPOTrainer tokenizes prompt and answer texts itself
(there is no path for our template's ids), replaces the model's `forward` with a fused-head one, and
ORPO is only in `trl.experimental`. The losses are in `model/preference_loss.py`.

The reference of DPO is the model training starts from, with its log-probs computed once before
training (`reference_logps`): no second copy of the model is held, and it is right for every start —
a fresh adapter (where it equals the base with the adapter disabled), an SFT adapter that keeps
training (where disabling the adapter would give the raw base, not the SFT model), or full fine-tuning.
"""
from __future__ import annotations

from typing import Any, Optional

import torch

from llama2ft.data.templates import IGNORE_INDEX
from llama2ft.model.preference_loss import dpo_loss, orpo_loss, sequence_logps

def pair_logps(model: Any, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, ...]:
    """(chosen logps, rejected logps, chosen lengths, rejected lengths) of a PairCollator batch, in one forward."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).logits
    logps, counts = sequence_logps(logits, batch["labels"], IGNORE_INDEX)
    b = logps.shape[0] // 2
    return logps[:b], logps[b:], counts[:b], counts[b:]


def preference_trainer_class() -> type:
    """The HF Trainer subclass for a preference method (built lazily: transformers imports slowly)."""
    from transformers import Trainer

    class PreferenceTrainer(Trainer):
        """`compute_loss` is the method's loss; the rewards are averaged over the logging window and
        logged with the loss (train and eval), as the Trainer logs its own figures."""

        def __init__(self, *args: Any, method: Any, **kwargs: Any):
            super().__init__(*args, **kwargs)
            self.method = method
            self._window: dict[str, dict[str, list[float]]] = {"train": {}, "eval": {}}

        def compute_loss(self, model: Any, inputs: dict, return_outputs: bool = False,
                         num_items_in_batch: Any = None) -> Any:
            loss, figures = method_loss(model, inputs, self.method)
            window = self._window["train" if model.training else "eval"]
            for key, value in figures.items():
                window.setdefault(key, []).append(float(value))
            return (loss, {"loss": loss}) if return_outputs else loss

        def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
            split = "eval" if any(k.startswith("eval_") for k in logs) else "train"
            prefix = "eval_" if split == "eval" else ""
            for key, values in self._window[split].items():
                if values:
                    logs[f"{prefix}{key}"] = round(sum(values) / len(values), 4)
            self._window[split] = {}
            super().log(logs, *args, **kwargs)

    return PreferenceTrainer


def method_loss(model: Any, inputs: dict, method: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The mean loss of a batch under `method` (its config node) and the figures to log."""
    chosen, rejected, n_c, n_r = pair_logps(model, inputs)
    if method.name == "orpo":
        loss, r = orpo_loss(chosen, rejected, n_c, n_r, method.beta)
        extra = {"log_odds_ratio": r["log_odds"].mean(), "nll_loss": r["nll"].mean()}
    else:
        loss, r = dpo_loss(chosen, rejected, inputs["ref_chosen"].to(chosen), inputs["ref_rejected"].to(chosen),
                           method.beta, method.loss_type, method.label_smoothing, n_c, n_r, method.sft_weight)
        extra = {}
    figures = {"rewards/chosen": r["chosen"].mean(), "rewards/rejected": r["rejected"].mean(),
               "rewards/margins": (r["chosen"] - r["rejected"]).mean(),
               "rewards/accuracies": (r["chosen"] > r["rejected"]).float().mean(), **extra}
    return loss.mean(), figures


@torch.no_grad()
def all_pair_logps(model: Any, features: list[dict], collator: Any, batch_size: int) -> list[tuple[float, ...]]:
    """(chosen logp, rejected logp, chosen tokens, rejected tokens) of every pair, in eval mode, in order."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    out: list[tuple[float, ...]] = []
    try:
        for start in range(0, len(features), batch_size):
            batch = collator([{k: f[k] for k in ("prompt_ids", "chosen_ids", "rejected_ids")}
                              for f in features[start:start + batch_size]])
            batch = {k: v.to(device) for k, v in batch.items()}
            out += list(zip(*(t.tolist() for t in pair_logps(model, batch))))
    finally:
        model.train(was_training)
    return out


def preference_accuracy(method: str, logps: list[tuple[float, ...]],
                        refs: Optional[list[tuple[float, float]]]) -> float:
    """Share of pairs the model prefers the chosen answer of: DPO, a larger log-prob gain over the
    reference (a tie, as at the start where the model is the reference, counts as not preferring);
    ORPO and a model without a reference, a larger per-token average log-prob."""
    if not logps:
        return 0.0
    if method == "dpo" and refs is not None:
        wins = [(c - rc) > (r - rr) for (c, r, _, _), (rc, rr) in zip(logps, refs)]
    else:
        wins = [c / nc > r / nr for c, r, nc, nr in logps]
    return sum(wins) / len(wins)


def likelihood_accuracy(logps: list[tuple[float, ...]]) -> float:
    """Share of pairs whose chosen answer has the higher summed log-probability (no reference)."""
    return sum(c > r for c, r, _, _ in logps) / len(logps) if logps else 0.0
