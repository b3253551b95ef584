"""What the chat, web, API and eval apps share: their config (configs/generate/default.yaml) mapped to
a `ModelSpec` and a `Sampling`, checked all at once before anything is loaded."""
from __future__ import annotations

import ipaddress
import logging
import os
import re
import sys
import warnings
from typing import Optional

from omegaconf import DictConfig

from llama2ft.errors import ConfigError
from llama2ft.generation import ChatModel, Sampling
from llama2ft.inference import ModelSpec, load_chat_model


def model_spec(cfg: DictConfig) -> ModelSpec:
    """The model named by run= / model.* / adapter= and the optional template= / quant= groups."""
    template = cfg.get("template")
    system = cfg.system if cfg.system is not None else (template.system if template is not None else None)
    quant = cfg.get("quant")
    m = cfg.model
    return ModelSpec(
        run=cfg.run, name_or_path=m.name_or_path, adapter=cfg.adapter, tokenizer=m.get("tokenizer"),
        template=template.name if template is not None else None, system=system,
        quant=quant.mode if quant is not None else None, dtype=m.get("dtype", "auto"), device=cfg.device,
        revision=m.get("revision"), trust_remote_code=bool(m.get("trust_remote_code", False)))


def sampling(cfg: DictConfig) -> Sampling:
    return Sampling(temperature=float(cfg.temperature), top_p=float(cfg.top_p), top_k=int(cfg.top_k),
                    repetition_penalty=float(cfg.repetition_penalty), max_new_tokens=int(cfg.max_new_tokens),
                    do_sample=bool(cfg.do_sample), seed=cfg.seed)


def check(cfg: DictConfig, extra: Optional[list[str]] = None) -> tuple[ModelSpec, Sampling]:
    """Raise one ConfigError listing every problem of the model keys, sampling keys and `extra`."""
    spec, samp = model_spec(cfg), sampling(cfg)
    problems = [*spec.problems(), *samp.problems(), *(extra or [])]
    if problems:
        raise ConfigError(problems)
    return spec, samp


TEXT_KEYS = ("prompt", "system")


def quote_text_overrides(argv: list[str], keys: tuple[str, ...] = TEXT_KEYS) -> list[str]:
    """Quote free-text overrides (`prompt=数字 680 是什么？`) for Hydra, whose override grammar rejects
    spaces, most punctuation and Chinese outside quotes; values the user quoted are left alone."""
    out = []
    for arg in argv:
        key, sep, value = arg.partition("=")
        if sep and key in keys and value and value[0] not in "'\"":
            # Hydra's quoted strings: escape quotes, and double only the backslashes before a quote
            value = re.sub(r"(\\*)'", lambda m: m.group(1) * 2 + "\\'", value)
            arg = f"{key}='" + re.sub(r"(\\+)$", lambda m: m.group(1) * 2, value) + "'"
        out.append(arg)
    return out


def port_problems(port: int) -> list[str]:
    return [] if 0 < int(port) < 65536 else [f"port={port}: must be in 1..65535"]


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def warn_if_exposed(host: str, protected: bool, what: str, missing: str) -> None:
    """Say so when a server listens beyond this machine with nothing to keep strangers out."""
    if not is_loopback(host) and not protected:
        print(f"warning: host={host} exposes {what} beyond this machine with no {missing}", file=sys.stderr,
              flush=True)


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


def load(spec: ModelSpec) -> ChatModel:
    quiet_libraries()
    return load_chat_model(spec)
