"""The `Method` interface: what a training method adds to the one training skeleton (training/pipeline.py).

The skeleton does everything every method needs (checks, data files through the data pipeline, the
model and its adapter, the Trainer, checkpoints and resume, metrics, greedy answers before and after,
the run folder); a method says what is its own: what its data rows are, how a batch is collated, the
Trainer (and loss) that optimises it, what it does with the model before training (a reference's
log-probs), its own held-out figures, and its settings (the `method` config node). Methods live in
training/methods/, one file each (found there by training/methods/__init__.py); the skeleton never imports one.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from omegaconf import DictConfig

from llama2ft.data.pipeline import Prepared
from llama2ft.data.splits import DIALOGUES, RowKind
from llama2ft.evaluation.heldout import QA


@dataclass
class MethodSettings:
    """The `method` config node every method has (its own dataclass adds the method's settings)."""

    name: str = "sft"


@dataclass
class MethodData:
    """A method's data for one run: what the Trainer reads, and what the skeleton reports on."""

    prepared: Prepared  # the data pipeline's splits, statistics, held-out examples and preview
    train: Any  # the Trainer's training dataset (the prepared one, or with columns the method added)
    eval: Optional[Any]
    extra: dict = field(default_factory=dict)  # what the method keeps for its own evaluation


class Method:
    """A training method. Subclasses set the class attributes and implement `collator` and
    `trainer_class`; the other hooks default to what SFT needs."""

    name = ""
    Settings: type = MethodSettings  # registered as method/<name>_schema; configs/method/<name>.yaml extends it
    rows: RowKind = DIALOGUES  # what its data files hold (data.splits / data.pair_encode)
    match_metric = "exact_match"  # metrics key of the greedy answers' match with the wanted answers
    fused_loss = True  # a next-token loss on labels, so Liger's fused linear cross-entropy applies
    # it continues an SFT model: `init_from` names one, and on the embedded default with no start the embedded
    # SFT model is trained (or reused) first (training/start.py)
    starts_from_sft = False
    # it trains a scorer: a sequence-classification model with one output (a reward model) instead of a causal
    # LM; it writes no answers
    scorer = False

    def problems(self, cfg: DictConfig) -> list[str]:
        """Config problems of this method's settings (collected with every other problem)."""
        return []

    def collator(self, tokenizer: Any, attention: str, cfg: DictConfig) -> Any:
        raise NotImplementedError

    def trainer_class(self) -> type:
        """The HF Trainer class (or subclass) that optimises this method."""
        raise NotImplementedError

    def trainer_kwargs(self, cfg: DictConfig) -> dict:
        return {}

    def group_by_length(self, cfg: DictConfig) -> bool:
        """Whether the Trainer batches rows of similar length (needs the data's `length` column)."""
        return False

    def data(self, cfg: DictConfig, prepared: Prepared) -> MethodData:
        """The Trainer's datasets from the prepared splits."""
        return MethodData(prepared, prepared.train, prepared.eval)

    def before_training(self, cfg: DictConfig, model: Any, data: MethodData) -> MethodData:
        """What the method needs from the model as training starts (e.g. a reference's log-probs)."""
        return data

    def questions(self, cfg: DictConfig, data: MethodData, limit: int) -> list[QA]:
        """Held-out questions for the greedy answers before and after training, with the wanted answers."""
        return []

    def evaluate(self, cfg: DictConfig, model: Any, data: MethodData, when: str) -> dict[str, float]:
        """The method's own held-out figures (printed; kept in metrics.json as <key>_before/_after)."""
        return {}

    def final_metrics(self, log_history: list[dict]) -> dict[str, Any]:
        """Figures of the end of training to keep in metrics.json (e.g. the last logged rewards)."""
        return {}
