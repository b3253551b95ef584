"""Request bodies of the OpenAI-compatible API, how their sampling fields map onto `Sampling`, which fields
and values the server refuses (a 400 naming the field, never a silent drop), and OpenAI-style error
responses."""
# No `from __future__ import annotations`: FastAPI and pydantic read real annotations.
from dataclasses import replace
from typing import Any, Optional, Union

from pydantic import BaseModel, ConfigDict

from llama2ft.core.errors import UserError
from llama2ft.inference.logprobs import MAX_TOP
from llama2ft.inference.sampling import Sampling

MAX_N = 8  # choices per prompt (`n`)
MAX_CHOICES = 64  # choices per request (prompts x n)


class Message(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: str
    content: Union[str, list, None] = None


class Common(BaseModel):
    """The fields both endpoints take. The sampling ones are named as in `Sampling` (OpenAI's max_tokens /
    max_completion_tokens are its max_new_tokens); None keeps the server's setting (see `sampling_of`)."""

    model_config = ConfigDict(extra="allow")  # kept, to be refused by name (`refused`): never silently dropped
    model: Optional[str] = None
    temperature: Optional[float] = None
    top_p: Optional[float] = None
    top_k: Optional[int] = None
    repetition_penalty: Optional[float] = None
    frequency_penalty: Optional[float] = None
    presence_penalty: Optional[float] = None
    max_tokens: Optional[int] = None
    max_completion_tokens: Optional[int] = None
    seed: Optional[int] = None
    stop: Union[str, list[str], None] = None
    n: int = 1
    stream: bool = False
    stream_options: Optional[dict] = None  # the final chunk carries the usage whether asked or not
    user: Optional[str] = None  # an end-user id for the caller's own records: accepted, not used


class ChatRequest(Common):
    messages: list[Message]
    logprobs: Optional[bool] = None
    top_logprobs: Optional[int] = None
    response_format: Optional[dict] = None  # only {"type": "text"}


class CompletionRequest(Common):
    prompt: Union[str, list[str], list[int], list[list[int]]]
    echo: bool = False
    logprobs: Optional[int] = None
    best_of: Optional[int] = None
    suffix: Optional[str] = None


def refused(req: Common) -> list[str]:
    """Every field or value of the request this server does not implement, each named."""
    p = [f"{name}: not supported by this server" for name in sorted(req.model_extra or {})]
    if not 1 <= req.n <= MAX_N:
        p.append(f"n={req.n}: must be in [1, {MAX_N}]")
    if isinstance(req, ChatRequest):
        if req.response_format not in (None, {"type": "text"}):
            p.append('response_format: only {"type": "text"} is supported')
        if req.top_logprobs is not None and not req.logprobs:
            p.append("top_logprobs: needs logprobs=true")
        if req.top_logprobs is not None and not 0 <= req.top_logprobs <= MAX_TOP:
            p.append(f"top_logprobs={req.top_logprobs}: must be in [0, {MAX_TOP}]")
        if req.stream and req.logprobs:
            p.append("logprobs: not supported with stream=true")
        if req.stream and req.n > 1:
            p.append("n: only n=1 with stream=true")
    else:
        if req.suffix is not None:
            p.append("suffix: not supported by this server")
        if req.best_of is not None and req.best_of != req.n:
            p.append(f"best_of={req.best_of}: only best_of equal to n ({req.n}) is supported")
        if req.logprobs is not None and not 0 <= req.logprobs <= MAX_TOP:
            p.append(f"logprobs={req.logprobs}: must be in [0, {MAX_TOP}]")
        if req.stream and (req.echo or req.logprobs is not None):
            p.append(f"{'echo' if req.echo else 'logprobs'}: not supported with stream=true")
        if req.stream and (req.n > 1 or len(prompt_list(req)) > 1):
            p.append("stream=true: only one prompt and n=1")
        if (req.max_tokens == 0 or req.max_completion_tokens == 0) and not req.echo:
            p.append("max_tokens=0: only with echo=true (score the prompt, generate nothing)")
        if len(prompt_list(req)) * req.n > MAX_CHOICES:
            p.append(f"prompt: {len(prompt_list(req))} prompts x n={req.n} is over {MAX_CHOICES} choices a request")
    return p


def prompt_list(req: CompletionRequest) -> list[Union[str, list[int]]]:
    """The request's prompts: a text, texts, token ids, or lists of token ids (OpenAI's four forms)."""
    p = req.prompt
    if isinstance(p, str):
        return [p]
    if p and all(isinstance(x, int) for x in p):
        return [list(p)]
    return list(p)


def sampling_of(req: Common, defaults: Sampling) -> Sampling:
    """The request's sampling settings over the server's: the one place the request's fields map onto
    `Sampling` (do_sample stays the server's). Bad values are one UserError, named as in the request.
    max_tokens=0 (a completion that only scores its prompt) is taken as 1 here: nothing is generated."""
    problems = refused(req)
    if problems:
        raise UserError("; ".join(problems))
    limit = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
    given = {"temperature": req.temperature, "top_p": req.top_p, "top_k": req.top_k,
             "repetition_penalty": req.repetition_penalty, "frequency_penalty": req.frequency_penalty,
             "presence_penalty": req.presence_penalty, "seed": req.seed,
             "max_new_tokens": 1 if limit == 0 and isinstance(req, CompletionRequest) and req.echo else limit}
    stop = (req.stop,) if isinstance(req.stop, str) else tuple(req.stop or ())
    samp = replace(defaults, **{key: value for key, value in given.items() if value is not None}, stop=stop)
    problems = samp.problems()
    if problems:
        raise UserError("; ".join(p.replace("max_new_tokens", "max_tokens") for p in problems))
    return samp


def choice_sampling(samp: Sampling, index: int) -> Sampling:
    """The settings of the `index`-th of n choices: each its own seed (seed + index) when the request gives one."""
    return samp if samp.seed is None or index == 0 else replace(samp, seed=samp.seed + index)


def error_response(status: int, message: str, kind: str = "invalid_request_error", param: Optional[str] = None) -> Any:
    from fastapi.responses import JSONResponse

    return JSONResponse(status_code=status, content={"error": {"message": message, "type": kind, "param": param,
                                                               "code": None}})
