"""Request bodies of the OpenAI-compatible API, how their sampling fields map onto `Sampling`, which fields
and values the server refuses (a 400 naming the field, never a silent drop), and OpenAI-style error
responses.

The bodies' JSON Schema (in /openapi.json) states what the checks here and in `Sampling.problems` refuse, from
the same bounds: pydantic only reads the types, the checks refuse the values, each with its own message. What
a schema cannot say (a prompt longer than the model's context, `top_logprobs` without `logprobs`, `stream`
with `n` > 1, ...) is a 400 all the same."""
# No `from __future__ import annotations`: FastAPI and pydantic read real annotations.
from dataclasses import replace
from typing import Annotated, Any, Optional, Union

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, WithJsonSchema

from llama2ft.core.errors import UserError
from llama2ft.inference.logprobs import MAX_TOP
from llama2ft.inference.sampling import BOUNDS, MAX_STOP, Bound, Sampling

MAX_N = 8  # choices per prompt (`n`)
MAX_CHOICES = 64  # choices per request (prompts x n)
N_BOUND = Bound(1, MAX_N)
TOP_BOUND = Bound(0, MAX_TOP)
ROLES = ("system", "developer", "user", "human", "assistant")


def _whole(value: Any) -> Any:
    """JSON Schema's integers include 2.0: taken as 2 (the models are strict: `true` or "2" stay refused)."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


Integer = Annotated[int, BeforeValidator(_whole)]
# Schema-only annotations: the value checks are `refused` and `Sampling.problems`, with their own messages.
TEXT = {"type": "string", "minLength": 1, "pattern": r"\S"}  # a blank prompt is refused
TOKEN_ID = {"type": "integer", "minimum": 0}  # below the served vocabulary's size too (api_schema.served_schema)
Text = Annotated[str, WithJsonSchema(TEXT)]
Texts = Annotated[list[str], WithJsonSchema({"type": "array", "minItems": 1, "maxItems": MAX_CHOICES, "items": TEXT})]
TokenIds = Annotated[list[Integer], WithJsonSchema({"type": "array", "minItems": 1, "items": TOKEN_ID})]
TokenIdLists = Annotated[list[list[Integer]], WithJsonSchema({
    "type": "array", "minItems": 1, "maxItems": MAX_CHOICES,
    "items": {"type": "array", "minItems": 1, "items": TOKEN_ID}})]
Stop = Annotated[Union[str, list[str], None], WithJsonSchema({"anyOf": [
    {"type": "string", "minLength": 1},
    {"type": "array", "maxItems": MAX_STOP, "items": {"type": "string", "minLength": 1}}, {"type": "null"}]})]


def _in(bound: Bound, default: Any = None, description: str = "") -> Any:
    """A field whose schema states `bound` (checked by `refused` / `Sampling.problems`, not by pydantic)."""
    return Field(default, description=description or None, json_schema_extra=bound.json_schema())


class Message(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)
    role: Annotated[str, WithJsonSchema({"type": "string", "enum": list(ROLES)})]
    content: Union[str, list, None] = None


class Common(BaseModel):
    """The fields both endpoints take. The sampling ones are named as in `Sampling` (OpenAI's max_tokens /
    max_completion_tokens are its max_new_tokens); None keeps the server's setting (see `sampling_of`)."""

    # unknown fields are kept, to be refused by name (`refused`): never silently dropped, as the schema says;
    # strict: a value of another JSON type is refused, not converted (`false` is no temperature)
    model_config = ConfigDict(extra="allow", strict=True, json_schema_extra={"additionalProperties": False})
    model: Optional[str] = None
    temperature: Optional[float] = _in(BOUNDS["temperature"], description="0 (or below 1e-5): greedy")
    top_p: Optional[float] = _in(BOUNDS["top_p"])
    top_k: Optional[Integer] = _in(BOUNDS["top_k"], description="0: off")
    repetition_penalty: Optional[float] = _in(BOUNDS["repetition_penalty"], description="1: off")
    frequency_penalty: Optional[float] = _in(BOUNDS["frequency_penalty"])
    presence_penalty: Optional[float] = _in(BOUNDS["presence_penalty"])
    max_tokens: Optional[Integer] = _in(BOUNDS["max_new_tokens"])
    max_completion_tokens: Optional[Integer] = _in(BOUNDS["max_new_tokens"])
    seed: Optional[Integer] = Field(None, description="any integer (taken modulo 2^64)")
    stop: Stop = None
    n: Integer = _in(N_BOUND, 1, "choices per prompt; with several prompts at most "
                             f"{MAX_CHOICES} choices a request; 1 with stream")
    stream: bool = False
    stream_options: Optional[dict] = None  # the final chunk carries the usage whether asked or not
    user: Optional[str] = None  # an end-user id for the caller's own records: accepted, not used


class ChatRequest(Common):
    messages: list[Message] = Field(json_schema_extra={"minItems": 1})
    logprobs: Optional[bool] = None
    top_logprobs: Optional[Integer] = _in(TOP_BOUND, description="with logprobs=true")
    response_format: Optional[dict] = Field(None, json_schema_extra={
        "anyOf": [{"type": "object", "properties": {"type": {"const": "text"}}, "required": ["type"],
                   "additionalProperties": False}, {"type": "null"}]})


class CompletionRequest(Common):
    prompt: Union[Text, Texts, TokenIds, TokenIdLists]
    echo: bool = False
    logprobs: Optional[Integer] = _in(TOP_BOUND, description="alternatives per token")
    best_of: Optional[Integer] = Field(None, description="only equal to n")
    max_tokens: Optional[Integer] = _in(Bound(0), description="0: only with echo=true (score the prompt)")
    max_completion_tokens: Optional[Integer] = _in(Bound(0), description="0: only with echo=true")


def refused(req: Common) -> list[str]:
    """Every field or value of the request this server does not implement, each named."""
    p = [f"{name}: not supported by this server" for name in sorted(req.model_extra or {})]
    if not N_BOUND.holds(req.n):
        p.append(f"n={req.n}: must be {N_BOUND.text()}")
    if isinstance(req, ChatRequest):
        if req.response_format not in (None, {"type": "text"}):
            p.append('response_format: only {"type": "text"} is supported')
        if req.top_logprobs is not None and not req.logprobs:
            p.append("top_logprobs: needs logprobs=true")
        if req.top_logprobs is not None and not TOP_BOUND.holds(req.top_logprobs):
            p.append(f"top_logprobs={req.top_logprobs}: must be {TOP_BOUND.text()}")
        if req.stream and req.logprobs:
            p.append("logprobs: not supported with stream=true")
        if req.stream and req.n > 1:
            p.append("n: only n=1 with stream=true")
    else:
        if req.best_of is not None and req.best_of != req.n:
            p.append(f"best_of={req.best_of}: only best_of equal to n ({req.n}) is supported")
        if req.logprobs is not None and not TOP_BOUND.holds(req.logprobs):
            p.append(f"logprobs={req.logprobs}: must be {TOP_BOUND.text()}")
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
    `Sampling` (do_sample stays the server's). Bad values are one UserError naming every problem, as in the
    request. max_tokens=0 (a completion that only scores its prompt) is taken as 1 here: nothing is generated
    (without echo `refused` names it)."""
    limit = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
    given = {"temperature": req.temperature, "top_p": req.top_p, "top_k": req.top_k,
             "repetition_penalty": req.repetition_penalty, "frequency_penalty": req.frequency_penalty,
             "presence_penalty": req.presence_penalty, "seed": req.seed,
             "max_new_tokens": 1 if limit == 0 and isinstance(req, CompletionRequest) else limit}
    stop = (req.stop,) if isinstance(req.stop, str) else tuple(req.stop or ())
    samp = replace(defaults, **{key: value for key, value in given.items() if value is not None}, stop=stop)
    problems = refused(req) + [p.replace("max_new_tokens", "max_tokens") for p in samp.problems()]
    if problems:
        raise UserError("; ".join(problems))
    return samp


def choice_sampling(samp: Sampling, index: int) -> Sampling:
    """The settings of the `index`-th of n choices: each its own seed (seed + index) when the request gives one."""
    return samp if samp.seed is None or index == 0 else replace(samp, seed=samp.seed + index)


def error_response(status: int, message: str, kind: str = "invalid_request_error", param: Optional[str] = None) -> Any:
    from fastapi.responses import JSONResponse

    return JSONResponse(status_code=status, content={"error": {"message": message, "type": kind, "param": param,
                                                               "code": None}})
