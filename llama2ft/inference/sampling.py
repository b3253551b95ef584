"""Sampling settings, stated once: their names (transformers'; OpenAI's for its two penalties), defaults
(the community's chat defaults: temperature 0.3, top_p 0.95, top_k 50, repetition_penalty 1.3,
max_new_tokens 512; the OpenAI penalties off) and checks.

Two penalties work differently: `repetition_penalty` (transformers', the community's 1.3) divides the
logit of every token already in the prompt or the answer; OpenAI's `frequency_penalty` / `presence_penalty`
subtract from the logit of a token already in the answer, once per occurrence / once. Both change greedy
(temperature 0) answers too; `repetition_penalty=1.0` turns the first off. They are applied in that order,
before temperature, top-k and top-p (inference/decoding.py).

`SamplingKeys` are the keys chat, web, serve and eval take (the apps' Hydra schemas inherit them, in
config/app_schemas.py); `Sampling` adds what only a request sets (the API's stop texts) and is what the
engines, the web page's controls, the API (serving/api_models.py) and the merged model's
generation_config.json read."""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Optional


@dataclass(frozen=True)
class Bound:
    """The values a number may take: [low, high], `low_open`: low itself excluded; None: no bound that side.
    The checks and the API's OpenAPI schema both read it, so they cannot disagree."""

    low: Optional[float] = None
    high: Optional[float] = None
    low_open: bool = False
    note: str = ""  # what a special value means, shown with the range

    def holds(self, value: float) -> bool:
        above = self.low is None or (value > self.low if self.low_open else value >= self.low)
        return above and (self.high is None or value <= self.high)

    def text(self) -> str:
        """`in [0, 2] (0 is greedy)`, `in (0, 1]`, `>= 1`."""
        if self.high is None:
            shown = f"{'>' if self.low_open else '>='} {self.low}"
        elif self.low is None:
            shown = f"<= {self.high}"
        else:
            shown = f"in {'(' if self.low_open else '['}{self.low}, {self.high}]"
        return f"{shown} ({self.note})" if self.note else shown

    def json_schema(self) -> dict[str, float]:
        """The range as JSON Schema keywords (OpenAPI 3.1)."""
        out: dict[str, float] = {}
        if self.low is not None:
            out["exclusiveMinimum" if self.low_open else "minimum"] = self.low
        if self.high is not None:
            out["maximum"] = self.high
        return out


MAX_STOP = 4  # stop texts a request may give (OpenAI's limit)
# Temperatures below this are greedy, as in vLLM: logits divided by a smaller one overflow to inf, and a
# draw from the resulting NaN probabilities fails (the limit of a vanishing temperature is the argmax anyway).
GREEDY_BELOW = 1e-5


@dataclass
class SamplingKeys:
    """The sampling keys of the generation apps (`temperature=0.7 seed=1 ...`), with their defaults."""

    temperature: float = 0.3  # 0 (or below GREEDY_BELOW) means greedy
    top_p: float = 0.95
    top_k: int = 50  # 0 turns it off
    repetition_penalty: float = 1.3  # 1.0 turns it off
    frequency_penalty: float = 0.0  # OpenAI's, in [-2, 2]: minus this per time the token is already in the answer
    presence_penalty: float = 0.0  # OpenAI's, in [-2, 2]: minus this once the token is in the answer
    max_new_tokens: int = 512
    do_sample: bool = True  # false: greedy, whatever the temperature
    seed: Optional[int] = None  # set: the same seed gives the same sampled answer


# the range of each numeric key (a seed may be any integer: `seed_bits`)
BOUNDS = {"temperature": Bound(0, 2, note="below 1e-5 is greedy"), "top_p": Bound(0, 1, low_open=True),
          "top_k": Bound(0, note="0 turns it off"), "repetition_penalty": Bound(0, 10, low_open=True),
          "frequency_penalty": Bound(-2, 2, note="0 turns it off"),
          "presence_penalty": Bound(-2, 2, note="0 turns it off"), "max_new_tokens": Bound(1)}


def seed_bits(seed: int) -> int:
    """A seed as the 64 bits torch's generators take (any integer is a seed: a larger one would overflow)."""
    return int(seed) % 2**64


@dataclass
class Sampling(SamplingKeys):
    """The settings one answer is generated with: the keys, plus a request's stop texts."""

    stop: tuple[str, ...] = ()  # the answer ends before the first of these texts (OpenAI's `stop`)

    @classmethod
    def of(cls, keys: Any) -> "Sampling":
        """The settings a config (or any object with the `SamplingKeys` attributes) names."""
        return cls(**{f.name: getattr(keys, f.name) for f in fields(SamplingKeys)})

    def problems(self, prefix: str = "") -> list[str]:
        p = [f"{prefix}{name}={getattr(self, name)}: must be {bound.text()}" for name, bound in BOUNDS.items()
             if not bound.holds(getattr(self, name))]
        if len(self.stop) > MAX_STOP or any(not s for s in self.stop):
            p.append(f"{prefix}stop: at most {MAX_STOP} non-empty texts")
        return p

    @property
    def greedy(self) -> bool:
        return not self.do_sample or self.temperature < GREEDY_BELOW

    @property
    def openai_penalties(self) -> bool:
        return bool(self.frequency_penalty or self.presence_penalty)

    def shown(self) -> dict[str, Any]:
        """The settings as a server announces its defaults (the keys and their values)."""
        return {f.name: getattr(self, f.name) for f in fields(SamplingKeys)}

    def generate_kwargs(self) -> dict[str, Any]:
        """transformers' generate() keywords (the OpenAI penalties are a logits processor: decoding.py)."""
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


def cut_at_stop(text: str, stop: tuple[str, ...], strip: bool = True) -> Optional[str]:
    """`text` up to the first stop text (stripped unless `strip=False`), or None when none occurs."""
    cuts = [text.find(s) for s in stop if s in text]
    if not cuts:
        return None
    return text[: min(cuts)].strip() if strip else text[: min(cuts)]
