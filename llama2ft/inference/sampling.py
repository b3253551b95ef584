"""Sampling settings, stated once: their names (transformers'), defaults (the community's chat defaults:
temperature 0.3, top_p 0.95, top_k 50, repetition_penalty 1.3, max_new_tokens 512) and checks.

`SamplingKeys` are the keys chat, web, serve and eval take (the apps' Hydra schemas inherit them, in
config/app_schemas.py); `Sampling` adds what only a request sets (the API's stop texts) and is what the
engines, the web page's controls, the API (serving/api_models.py) and the merged model's
generation_config.json read."""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Optional


@dataclass
class SamplingKeys:
    """The sampling keys of the generation apps (`temperature=0.7 seed=1 ...`), with their defaults."""

    temperature: float = 0.3  # 0 means greedy
    top_p: float = 0.95
    top_k: int = 50  # 0 turns it off
    repetition_penalty: float = 1.3
    max_new_tokens: int = 512
    do_sample: bool = True  # false: greedy, whatever the temperature
    seed: Optional[int] = None  # set: the same seed gives the same sampled answer


@dataclass
class Sampling(SamplingKeys):
    """The settings one answer is generated with: the keys, plus a request's stop texts."""

    stop: tuple[str, ...] = ()  # the answer ends before the first of these texts (OpenAI's `stop`)

    @classmethod
    def of(cls, keys: Any) -> "Sampling":
        """The settings a config (or any object with the `SamplingKeys` attributes) names."""
        return cls(**{f.name: getattr(keys, f.name) for f in fields(SamplingKeys)})

    def problems(self, prefix: str = "") -> list[str]:
        p = []
        if not 0 <= self.temperature <= 2:
            p.append(f"{prefix}temperature={self.temperature}: must be in [0, 2] (0 is greedy)")
        if not 0 < self.top_p <= 1:
            p.append(f"{prefix}top_p={self.top_p}: must be in (0, 1]")
        if self.top_k < 0:
            p.append(f"{prefix}top_k={self.top_k}: must be >= 0 (0 turns it off)")
        if not 0 < self.repetition_penalty <= 10:
            p.append(f"{prefix}repetition_penalty={self.repetition_penalty}: must be in (0, 10]")
        if self.max_new_tokens < 1:
            p.append(f"{prefix}max_new_tokens={self.max_new_tokens}: must be >= 1")
        if len(self.stop) > 4 or any(not s for s in self.stop):
            p.append(f"{prefix}stop: at most 4 non-empty texts")
        return p

    @property
    def greedy(self) -> bool:
        return not self.do_sample or self.temperature == 0

    def generate_kwargs(self) -> dict[str, Any]:
        kw: dict[str, Any] = {"repetition_penalty": self.repetition_penalty}
        if self.greedy:
            kw.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        else:
            kw.update(do_sample=True, temperature=self.temperature, top_p=self.top_p, top_k=self.top_k)
        return kw

    def generation_config(self) -> dict[str, Any]:
        """These settings as `transformers.GenerationConfig` keys (a published model's defaults)."""
        return {"do_sample": self.do_sample, "temperature": self.temperature, "top_p": self.top_p,
                "top_k": self.top_k, "repetition_penalty": self.repetition_penalty,
                "max_new_tokens": self.max_new_tokens}


def cut_at_stop(text: str, stop: tuple[str, ...]) -> Optional[str]:
    """`text` up to the first stop text (stripped), or None when none occurs."""
    cuts = [text.find(s) for s in stop if s in text]
    return text[: min(cuts)].strip() if cuts else None
