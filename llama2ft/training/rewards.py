"""The rewards GRPO learns from (`method.rewards=[...]`, weighted by `method.reward_weights`):

- built-ins: `chinese_answer` (the share of Chinese letters: llama2ft-eval's metric, the same function),
  `exact_match` (1 when the answer equals the row's `answer` column), and two penalties: `repetition`
  (minus eval's repetition share) and `overlong` (DAPO's soft penalty for answers near max_new_tokens);
- a function of the user's, `path/to/file.py:function` or `package.module:function`, called with TRL's reward
  signature: `prompts`, `completions`, `completion_ids`, every other column of the rows as a keyword (one value
  per completion), `trainer_state`, `log_metric` and `log_extra`; it returns one float (or None: not scored)
  per completion. Reward functions written for TRL's GRPOTrainer run unchanged;
- a reward model: an `llama2ft-train method=rm` run folder or its merged folder.

A reward that cannot be imported is a config problem; one that raises, returns the wrong count or a NaN stops
the run with one error naming it (a first call on a few held-out rows finds most of these before any model
loads).
"""
from __future__ import annotations

import importlib
import importlib.util
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from llama2ft.core.errors import UserError
from llama2ft.data.dialogue import HUMAN, Turn
from llama2ft.data.prompt_rows import ANSWER_COLUMN
from llama2ft.evaluation.metrics import chinese_share, exact_match, repetition

REWARD_INPUTS = ("text", "messages")  # TRL's standard (strings) and conversational (message lists) formats


def chinese_answer(completions: list[str], **kwargs: Any) -> list[float]:
    """The share of each answer's letters that are Chinese (0 for an answer without letters)."""
    return [chinese_share(c) for c in completions]


def exact_match_reward(completions: list[str], answer: list[str], **kwargs: Any) -> list[float]:
    """1.0 where the answer equals the row's `answer` (surrounding whitespace aside), else 0.0."""
    return [float(exact_match(c, str(a))) for c, a in zip(completions, answer)]


def repetition_penalty(completions: list[str], **kwargs: Any) -> list[float]:
    """Minus the share of repeated 4-grams (llama2ft-eval's degeneration metric): 0 for fresh text, near -1 for
    a loop."""
    return [-repetition(c) for c in completions]


def overlong_penalty(max_new_tokens: int) -> Callable[..., list[float]]:
    """DAPO's soft overlong punishment: 0 up to the last quarter of max_new_tokens, then down linearly to -1."""
    buffer = max(1, max_new_tokens // 4)

    def overlong(completion_ids: list[list[int]], **kwargs: Any) -> list[float]:
        return [min(0.0, (max_new_tokens - buffer - len(ids)) / buffer) for ids in completion_ids]

    return overlong


@dataclass(frozen=True)
class Builtin:
    make: Callable[[int], Callable[..., list]]  # max_new_tokens -> the function
    needs: tuple[str, ...] = ()  # columns the rows must have


BUILTINS = {
    "chinese_answer": Builtin(lambda _: chinese_answer),
    "exact_match": Builtin(lambda _: exact_match_reward, (ANSWER_COLUMN,)),
    "repetition": Builtin(lambda _: repetition_penalty),
    "overlong": Builtin(overlong_penalty),
}


@dataclass
class Batch:
    """What one scoring call sees: N completions, each with its prompt and its row's columns."""

    prompts: list[str]
    turns: list[tuple[Turn, ...]]
    completions: list[str]
    completion_ids: list[list[int]]
    columns: dict[str, list]  # column -> one value per completion
    extra: dict = field(default_factory=dict)  # trainer_state, log_metric, log_extra


RESERVED = ("prompts", "completions", "completion_ids", "trainer_state", "log_metric", "log_extra")


def batch_of(rows: list[Any], n: int, completions: list[str], completion_ids: list[list[int]],
             extra: Optional[dict] = None) -> Batch:
    """The Batch of `rows` (PromptRows, or anything with `prompt`, `turns`, `columns`) each answered `n`
    times in a row; a column missing from a row is None for its completions."""
    keys = sorted(set().union(*(r.columns for r in rows)))
    columns = {k: [r.columns.get(k) for r in rows for _ in range(n)] for k in keys}
    return Batch([r.prompt for r in rows for _ in range(n)], [r.turns for r in rows for _ in range(n)], completions,
                 completion_ids, columns, extra or {})


@dataclass
class Reward:
    """One reward: a TRL-signature function, or a reward model (loaded when training starts)."""

    spec: str  # as written in method.rewards
    fn: Optional[Callable[..., Any]] = None
    needs: tuple[str, ...] = ()
    model_path: Optional[str] = None
    model: Any = None

    @property
    def name(self) -> str:
        """What its figures are logged as: the built-in's or function's name, or the reward model's folder name."""
        if self.model_path is not None:
            return Path(self.model_path).name
        return self.spec.rsplit(":", 1)[-1]

    def load(self, device: Any) -> None:
        if self.model_path is not None and self.model is None:
            from llama2ft.training.reward_model import load_reward_model

            self.model = load_reward_model(self.model_path, device)

    def __call__(self, batch: Batch, messages: bool) -> list:
        if self.model is not None:
            return self.model.score([list(t) for t in batch.turns], batch.completions)
        prompts: Any = batch.prompts
        completions: Any = batch.completions
        if messages:  # TRL's conversational format
            prompts = [[{"role": "user" if t.role == HUMAN else "assistant", "content": t.text} for t in turns]
                       for turns in batch.turns]
            completions = [[{"role": "assistant", "content": c}] for c in batch.completions]
        return self.fn(prompts=prompts, completions=completions, completion_ids=batch.completion_ids,
                       **batch.columns, **batch.extra)


def _import_function(spec: str) -> Callable[..., Any]:
    """`path/to/file.py:function` (relative to the working directory) or `package.module:function`."""
    where, _, name = spec.rpartition(":")
    if where.endswith(".py"):
        path = Path(where).expanduser()
        if not path.is_file():
            raise ImportError(f"no file {where}")
        module_spec = importlib.util.spec_from_file_location(f"llama2ft_reward_{path.stem}", path)
        module = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(module)  # type: ignore[union-attr]
    else:
        added = os.getcwd() not in sys.path  # a module beside the user, as `python -c` would find it
        if added:
            sys.path.append(os.getcwd())
        try:
            module = importlib.import_module(where)
        finally:
            if added:
                sys.path.remove(os.getcwd())
    fn = getattr(module, name, None)
    if not callable(fn):
        raise ImportError(f"{where} has no function {name!r}")
    return fn


def resolve(spec: str, max_new_tokens: int) -> Reward:
    """The reward `spec` names; UserError when it names nothing usable."""
    if spec in BUILTINS:
        builtin = BUILTINS[spec]
        return Reward(spec, builtin.make(max_new_tokens), builtin.needs)
    if ":" in spec and not Path(spec).exists():
        try:
            return Reward(spec, _import_function(spec))
        except Exception as exc:  # noqa: BLE001 - whatever the user's module raises on import is reported
            raise UserError(f"method.rewards: {spec!r} cannot be imported: {type(exc).__name__}: {exc}") from None
    if Path(spec).expanduser().is_dir():
        from llama2ft.training.reward_model import is_reward_model

        if is_reward_model(spec):
            return Reward(spec, model_path=str(Path(spec).expanduser()))
        raise UserError(f"method.rewards: {spec!r} is a folder but not a reward model (an llama2ft-train method=rm run "
                        "or its merged folder)")
    raise UserError(f"method.rewards: {spec!r} is not a built-in reward ({', '.join(BUILTINS)}), a file.py:function "
                    "or package.module:function, nor a reward model folder")


def reward_problems(specs: list[str], weights: Optional[list[float]], max_new_tokens: int) -> list[str]:
    """Config problems of method.rewards and method.reward_weights (every reward is imported once here)."""
    p = [] if specs else ["method.rewards: name at least one reward, e.g. method.rewards=[exact_match]"]
    for spec in specs:
        try:
            resolve(spec, max_new_tokens)
        except UserError as exc:
            p.append(str(exc))
    if weights is not None and len(weights) != len(specs):
        p.append(f"method.reward_weights: {len(weights)} weights for {len(specs)} rewards")
    return p


class RewardSet:
    """The rewards of a run and their weights: scores completions, checks what each reward returns."""

    def __init__(self, specs: list[str], weights: Optional[list[float]], max_new_tokens: int, messages: bool = False):
        self.rewards = [resolve(s, max_new_tokens) for s in specs]
        self.weights = torch.tensor(list(weights) if weights is not None else [1.0] * len(specs), dtype=torch.float32)
        self.messages = messages

    @property
    def names(self) -> list[str]:
        return [r.name for r in self.rewards]

    def check_columns(self, columns: set[str], files: str) -> None:
        """The columns every reward needs are there, and none takes the name of an argument of the signature."""
        clash = sorted(columns & set(RESERVED))
        if clash:
            raise UserError(f"{files}: column {', '.join(map(repr, clash))} has the name of a reward function argument "
                            f"({', '.join(RESERVED)}); rename it")
        for reward in self.rewards:
            missing = [c for c in reward.needs if c not in columns]
            if missing:
                raise UserError(f"reward {reward.spec} needs a {', '.join(map(repr, missing))} column in {files} "
                                f"(its rows have: {', '.join(sorted(columns)) or 'only the prompt'})")

    def try_on(self, rows: list[Any], tokenizer: Any) -> None:
        """Call every reward function once on `rows`, each answered with its reference (if it has one) and with
        nothing: a reward that raises, returns the wrong count or a NaN is found before any model loads."""
        completions = [c for r in rows for c in (str(r.columns.get(ANSWER_COLUMN) or ""), "")]
        ids = [tokenizer(c, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id] for c in completions]
        batch = batch_of(rows, 2, completions, ids, {"trainer_state": None, "log_metric": lambda *a: None,
                                                     "log_extra": lambda *a: None})
        self.score(batch, [r for r in self.rewards if r.fn is not None])  # reward models load with the model

    def load(self, device: Any) -> None:
        for reward in self.rewards:
            reward.load(device)

    def score(self, batch: Batch, rewards: Optional[list[Reward]] = None) -> torch.Tensor:
        """(N, rewards) scores; None becomes NaN (not scored, as in TRL); anything else wrong is a UserError."""
        rewards = self.rewards if rewards is None else rewards
        out = torch.empty(len(batch.completions), len(rewards))
        for j, reward in enumerate(rewards):
            try:
                values = reward(batch, self.messages)
            except UserError:
                raise
            except Exception as exc:  # noqa: BLE001 - a user's function fails: named, without a traceback
                raise UserError(f"reward {reward.spec} raised {type(exc).__name__}: {exc}") from None
            out[:, j] = torch.tensor(_checked(reward.spec, values, batch), dtype=torch.float32)
        return out

    def total(self, per_reward: torch.Tensor) -> torch.Tensor:
        """The weighted sum of each completion's rewards (NaN where no reward scored it)."""
        weighted = (per_reward * self.weights).nansum(dim=1)
        return torch.where(per_reward.isnan().all(dim=1), torch.full_like(weighted, math.nan), weighted)


def _checked(spec: str, values: Any, batch: Batch) -> list[float]:
    try:
        values = list(values)
    except TypeError:
        raise UserError(f"reward {spec} returned {type(values).__name__}, not a list of floats") from None
    if len(values) != len(batch.completions):
        raise UserError(f"reward {spec} returned {len(values)} values for {len(batch.completions)} completions "
                        "(one float per completion)")
    out = []
    for k, value in enumerate(values):
        if value is None:
            out.append(math.nan)
            continue
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise UserError(f"reward {spec} returned {value!r} for completion {k}: not a number") from None
        if not math.isfinite(number):
            raise UserError(f"reward {spec} returned {number} for completion {k} (prompt {batch.prompts[k][:60]!r}, "
                            f"completion {batch.completions[k][:60]!r})")
        out.append(number)
    return out
