"""Request bodies of the OpenAI-compatible API, how their sampling fields map onto `Sampling`, and
OpenAI-style error responses."""
# No `from __future__ import annotations`: FastAPI and pydantic read real annotations.
from dataclasses import replace
from typing import Any, Optional, Union

from pydantic import BaseModel, ConfigDict

from llama2ft.core.errors import UserError
from llama2ft.inference.sampling import Sampling


class Message(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: str
    content: Union[str, list, None] = None


class Common(BaseModel):
    """The fields both endpoints take. The sampling ones are named as in `Sampling` (OpenAI's max_tokens /
    max_completion_tokens are its max_new_tokens); None keeps the server's setting (see `sampling_of`)."""

    model_config = ConfigDict(extra="allow")  # unknown OpenAI fields (user, logprobs=false, ...) are ignored
    model: Optional[str] = None
    temperature: Optional[float] = None
    top_p: Optional[float] = None
    top_k: Optional[int] = None
    repetition_penalty: Optional[float] = None
    max_tokens: Optional[int] = None
    max_completion_tokens: Optional[int] = None
    seed: Optional[int] = None
    stop: Union[str, list[str], None] = None
    n: int = 1
    stream: bool = False


class ChatRequest(Common):
    messages: list[Message]


class CompletionRequest(Common):
    prompt: Union[str, list[str]]


def sampling_of(req: Common, defaults: Sampling) -> Sampling:
    """The request's sampling settings over the server's: the one place the request's fields map onto
    `Sampling` (do_sample stays the server's). Bad values are one UserError, named as in the request."""
    if req.n != 1:
        raise UserError("n: only n=1 is supported")
    given = {"temperature": req.temperature, "top_p": req.top_p, "top_k": req.top_k,
             "repetition_penalty": req.repetition_penalty, "seed": req.seed,
             "max_new_tokens": req.max_completion_tokens or req.max_tokens}
    stop = (req.stop,) if isinstance(req.stop, str) else tuple(req.stop or ())
    samp = replace(defaults, **{key: value for key, value in given.items() if value is not None}, stop=stop)
    problems = samp.problems()
    if problems:
        raise UserError("; ".join(p.replace("max_new_tokens", "max_tokens") for p in problems))
    return samp


def error_response(status: int, message: str, kind: str = "invalid_request_error", param: Optional[str] = None) -> Any:
    from fastapi.responses import JSONResponse

    return JSONResponse(status_code=status, content={"error": {"message": message, "type": kind, "param": param,
                                                               "code": None}})
