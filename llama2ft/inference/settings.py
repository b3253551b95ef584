"""What the chat, web, API and eval apps share: their generation keys (configs/generate/default.yaml)
mapped to a `ModelSpec` and a `Sampling`, checked all at once before anything is loaded."""
from __future__ import annotations

import logging
import os
import warnings
from typing import Any, Optional

from llama2ft.core.errors import ConfigError, UserError
from llama2ft.inference.engine import ChatModel
from llama2ft.inference.loader import ModelSpec, load_chat_model, load_vllm
from llama2ft.inference.sampling import Sampling
from llama2ft.inference.vllm_engine import ENGINES, require_vllm


def model_spec(cfg: Any) -> ModelSpec:
    """The model named by run= / model.* / adapter= and the optional template= / quant= groups."""
    template = cfg.get("template")
    system = cfg.system if cfg.system is not None else (template.system if template is not None else None)
    quant = cfg.get("quant")
    m = cfg.model
    return ModelSpec(
        run=cfg.run, name_or_path=m.name_or_path, adapter=cfg.adapter, tokenizer=m.get("tokenizer"),
        template=template.name if template is not None else None, system=system,
        quant=quant.mode if quant is not None else None, dtype=m.get("dtype", "auto"), device=cfg.device,
        cpu_linear=cfg.get("cpu_linear", "auto"), revision=m.get("revision"),
        trust_remote_code=bool(m.get("trust_remote_code", False)))


def sampling(cfg: Any) -> Sampling:
    return Sampling(temperature=float(cfg.temperature), top_p=float(cfg.top_p), top_k=int(cfg.top_k),
                    repetition_penalty=float(cfg.repetition_penalty), max_new_tokens=int(cfg.max_new_tokens),
                    do_sample=bool(cfg.do_sample), seed=cfg.seed)


def check(cfg: Any, extra: Optional[list[str]] = None) -> tuple[ModelSpec, Sampling]:
    """Raise one ConfigError listing every problem of the model keys, sampling keys and `extra`."""
    spec, samp = model_spec(cfg), sampling(cfg)
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
