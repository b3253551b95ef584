"""What `/openapi.json` says the API answers, so that generated clients and schema-driven fuzzers agree with
the server: the bodies of its answers (documentation only: the handlers build them, the fuzz test in
tests/test_serve.py checks each against this), every refusal as the 400 it is (never FastAPI's 422: bad input
of any kind is a 400 here, serving/api.py), 401 without the API key, 413 past the body limit and 503 with
Retry-After when the queue is full or the server drains."""
# No `from __future__ import annotations`: pydantic reads real annotations.
from typing import Any, Literal, Optional, get_args

from pydantic import BaseModel

FINISH = Literal["stop", "length", "cancelled"]  # inference/request.py: EOS, max_tokens, client gone


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: Optional[str] = None
    code: Optional[str] = None


class ErrorBody(BaseModel):
    """OpenAI's error shape."""

    error: ErrorDetail


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class LegacyLogprobs(BaseModel):
    """`logprobs: k` of /v1/completions; the prompt's first token has null log-prob and alternatives."""

    tokens: list[str]
    token_logprobs: list[Optional[float]]
    top_logprobs: list[Optional[dict[str, float]]]
    text_offset: list[int]


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: Optional[LegacyLogprobs]
    finish_reason: FINISH


class Completion(BaseModel):
    id: str
    object: Literal["text_completion"]
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int]


class TokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChatLogprobs(BaseModel):
    content: list[TokenLogprob]
    refusal: None


class AssistantMessage(BaseModel):
    role: Literal["assistant"]
    content: str


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    logprobs: Optional[ChatLogprobs]
    finish_reason: FINISH


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage


class ServedModel(BaseModel):
    id: str
    object: Literal["model"]
    created: int
    owned_by: str
    sampling_defaults: dict[str, Any]


class ModelList(BaseModel):
    object: Literal["list"]
    data: list[ServedModel]


class Health(BaseModel):
    status: Literal["ok"]
    model: str


class Draining(BaseModel):
    status: Literal["draining"]
    in_flight: int


def _error(description: str, retry_after: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {"model": ErrorBody, "description": description}
    if retry_after:
        out["headers"] = {"Retry-After": {"description": "seconds to wait", "required": True,
                                          "schema": {"type": "string"}}}
    return out




def _stream(kind: str, delta: dict[str, Any]) -> dict[str, Any]:
    """With stream=true: server-sent events, each `data: CHUNK` (JSON), the last `data: [DONE]`; the chunk
    before it has the finish_reason and the usage. `itemSchema` describes one event (FastAPI's and Open API
    3.2's way)."""
    choice = {"type": "object", "required": ["index", *delta, "logprobs", "finish_reason"],
              "properties": {"index": {"type": "integer"}, **delta, "logprobs": {"type": "null"},
                             "finish_reason": {"enum": [*get_args(FINISH), None]}}}
    chunk = {"type": "object", "required": ["id", "object", "created", "model", "choices"],
             "properties": {"id": {"type": "string"}, "object": {"const": kind}, "created": {"type": "integer"},
                            "model": {"type": "string"}, "choices": {"type": "array", "items": choice},
                            "usage": {"$ref": "#/components/schemas/Usage"}}}
    data = {"anyOf": [{"const": "[DONE]"},
                      {"type": "string", "contentMediaType": "application/json", "contentSchema": chunk}]}
    return {"text/event-stream": {"itemSchema": {"type": "object", "required": ["data"], "properties": {"data": data}}}}


CHAT_STREAM = _stream("chat.completion.chunk", {"delta": {
    "type": "object", "properties": {"role": {"const": "assistant"}, "content": {"type": "string"}}}})
COMPLETION_STREAM = _stream("text_completion", {"text": {"type": "string"}})
BAD_REQUEST = _error("a refused request: a malformed body, a value out of range, a field this server does not "
                     "implement (named), a prompt longer than the model's context")
UNAUTHORIZED = _error("no or a wrong API key (`Authorization: Bearer KEY`), when the server has one")
TOO_LARGE = _error("the request body is over the server's max_request_bytes")
BUSY = _error("max_queue requests are waiting, or the server is draining (SIGTERM)", retry_after=True)


def responses(answer: Any, v1: bool = True, body: bool = False, stream: Optional[dict] = None) -> dict[Any, Any]:
    """The documented answers of one route: 200 with `answer` (and the event `stream` of stream=true), and the
    refusals that apply to it."""
    ok: dict[str, Any] = {"model": answer}
    if stream:
        ok["content"] = stream
    out: dict[Any, Any] = {200: ok, 503: BUSY}
    if v1:
        out[401] = UNAUTHORIZED
    if body:
        out.update({400: BAD_REQUEST, 413: TOO_LARGE})
    return out


HEALTH = {200: {"model": Health}, 503: {"model": Draining, "description": "the server is draining (SIGTERM)"}}


def served_schema(schema: dict[str, Any], vocab_size: int) -> dict[str, Any]:
    """FastAPI's schema of this server, finished in place: without the 422 it adds to every route with a body
    (this server answers 400), and with the largest token id a prompt may hold (the served tokenizer's)."""
    for path in schema["paths"].values():
        for operation in path.values():
            operation["responses"].pop("422", None)
    for name in ("HTTPValidationError", "ValidationError"):
        schema["components"]["schemas"].pop(name, None)
    # the prompt's forms, as CompletionRequest.prompt states them: text, texts, token ids, lists of token ids
    _, _, ids, lists = schema["components"]["schemas"]["CompletionRequest"]["properties"]["prompt"]["anyOf"]
    for holder in (ids, lists["items"]):  # new dicts: the schema may share api_models.TOKEN_ID itself
        holder["items"] = {**holder["items"], "maximum": vocab_size - 1}
    return schema
