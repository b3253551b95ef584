"""What the chat, web, API and eval apps share: their generation keys (configs/generate/default.yaml) read
as a `ModelSpec` (inference/model_choice.py) and a `Sampling` (inference/sampling.py), checked all at once
before anything is loaded; the engine keys; loading the model."""
from __future__ import annotations

import logging
import os
import warnings
from typing import Any, Optional

from llama2ft.core.errors import ConfigError, UserError
from llama2ft.inference.engine import ChatModel
from llama2ft.inference.loader import load_chat_model, load_vllm
from llama2ft.inference.model_choice import ModelSpec
from llama2ft.inference.sampling import Sampling
from llama2ft.inference.vllm_engine import ENGINES, require_vllm


def check(cfg: Any, extra: Optional[list[str]] = None) -> tuple[ModelSpec, Sampling]:
    """Raise one ConfigError listing every problem of the model keys, sampling keys and `extra`."""
    spec, samp = ModelSpec.from_config(cfg), Sampling.of(cfg)
    problems = [*spec.problems(), *samp.problems(), *(extra or [])]
    if problems:
        raise ConfigError(problems)
    return spec, samp


def quiet_libraries() -> None:
    """Keep progress bars and library warnings out of a chat screen; errors still show."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    warnings.filterwarnings("ignore", category=FutureWarning)  # deprecation notices peft triggers in transformers
    for name in ("transformers", "peft", "bitsandbytes", "accelerate", "httpx"):
        logging.getLogger(name).setLevel(logging.ERROR)


def engine_problems(max_batch: int, engine: str = "transformers") -> list[str]:
    """The `max_batch=` and `engine=` keys of serve/web/eval; engine=vllm must be able to run here."""
    problems = [] if int(max_batch) >= 1 else [f"max_batch={max_batch}: must be >= 1 (1: one request at a time)"]
    if engine not in ENGINES:
        problems.append(f"engine={engine!r}: must be one of {', '.join(ENGINES)}")
    elif engine == "vllm":
        try:
            require_vllm()
        except UserError as exc:
            problems.append(str(exc))
    return problems


def load(spec: ModelSpec, max_batch: int = 1, max_queue: Optional[int] = None,
         engine: str = "transformers") -> ChatModel:
    """The model to talk to; `max_batch` > 1 batches concurrent requests, `max_queue` bounds the wait."""
    quiet_libraries()
    chat = load_vllm(spec, max_batch) if engine == "vllm" else load_chat_model(spec)
    chat.max_batch, chat.max_queue = int(max_batch), max_queue
    return chat
