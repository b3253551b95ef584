"""The OpenAI-compatible HTTP API of `llama2ft-serve`, on the training template.

Endpoints: POST /v1/chat/completions and /v1/completions (both with `stream`), GET /v1/models (with the
server's sampling defaults), /health. Extra sampling fields `top_k` and `repetition_penalty` go in the
request body (openai: `extra_body=`); OpenAI's `frequency_penalty`/`presence_penalty`, `n`, `logprobs`
(completions: `echo`, `max_tokens=0`, several prompts, token-id prompts; chat: `top_logprobs`) are
implemented (serving/api_scoring.py); any other field gets a 400 naming it.
Concurrent requests share the model through the generation core (continuous batching up to `max_batch`):
each is answered as if it were alone, and one request's tokens never reach another's stream. Past `max_queue` waiting requests
the server answers 503 with Retry-After instead of queueing without bound; request bodies are capped.
"""
# No `from __future__ import annotations`: FastAPI reads the handlers' real annotations.
import asyncio
import hmac
import json
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any, AsyncIterator, Iterator, Optional

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import StreamingResponse
from starlette.exceptions import HTTPException

from llama2ft.core.errors import UserError
from llama2ft.inference.engine import ChatModel
from llama2ft.inference.request import Generation, QueueFull
from llama2ft.inference.messages import message_text, to_turns
from llama2ft.inference.sampling import Sampling
from llama2ft.serving.api_models import (ChatRequest, CompletionRequest, choice_sampling, error_response, prompt_list,
                                         sampling_of)
from llama2ft.serving.api_schema import (CHAT_STREAM, COMPLETION_STREAM, HEALTH, ChatCompletion, Completion, ModelList,
                                         responses, served_schema)
from llama2ft.serving.api_scoring import chat_logprobs, completion_choice, completion_choices, generate_all


@dataclass
class Served:
    """What the handlers serve, kept on `app.state.served`."""

    chat: ChatModel
    defaults: Sampling
    name: str
    api_key: Optional[str]


class Unauthorized(Exception):
    pass


MAX_REQUEST_BYTES = 1_000_000


def create_app(chat: ChatModel, defaults: Sampling, served_name: str, api_key: Optional[str] = None,
               max_request_bytes: int = MAX_REQUEST_BYTES) -> FastAPI:
    app = FastAPI(title="llama2ft", version="1")
    app.state.served = Served(chat, defaults, served_name, api_key)
    app.add_exception_handler(RequestValidationError, _invalid)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(UserError, _user_error)
    app.add_exception_handler(Unauthorized, _unauthorized)
    app.add_exception_handler(QueueFull, _busy)
    app.add_middleware(BodyLimit, max_bytes=max_request_bytes)
    v1 = [Depends(_authorized)]
    app.add_api_route("/health", health, methods=["GET"], responses=HEALTH)
    app.add_api_route("/v1/models", models, methods=["GET"], dependencies=v1, responses=responses(ModelList))
    app.add_api_route("/v1/chat/completions", chat_completions, methods=["POST"], dependencies=v1,
                      responses=responses(ChatCompletion, body=True, stream=CHAT_STREAM))
    app.add_api_route("/v1/completions", completions, methods=["POST"], dependencies=v1,
                      responses=responses(Completion, body=True, stream=COMPLETION_STREAM))
    served_schema(app.openapi(), len(chat.tokenizer))  # FastAPI keeps this dict as the app's (app.openapi_schema)
    return app


# ---------------------------------------------------------------- errors and auth
async def _invalid(_: Request, exc: RequestValidationError) -> Any:
    parts = [f"{'.'.join(str(x) for x in e['loc'][1:]) or 'body'}: {e['msg']}" for e in exc.errors()]
    return error_response(400, "; ".join(parts) or "invalid request")


async def _http_error(_: Request, exc: HTTPException) -> Any:
    # FastAPI's own refusals (a body it cannot parse, an unknown path or method) in OpenAI's error shape too
    return error_response(exc.status_code, str(exc.detail))


async def _user_error(_: Request, exc: UserError) -> Any:
    return error_response(400, str(exc))


async def _unauthorized(_: Request, exc: Unauthorized) -> Any:
    return error_response(401, "invalid or missing API key (Authorization: Bearer ...)", "authentication_error")


async def _busy(_: Request, exc: QueueFull) -> Any:
    response = error_response(503, str(exc), "server_busy")
    response.headers["Retry-After"] = str(exc.retry_after)
    return response


def _authorized(request: Request) -> None:
    # a dependency, not an HTTP middleware: Starlette's middleware re-wraps every streamed chunk
    key = request.app.state.served.api_key
    given = request.headers.get("authorization", "").encode()
    if key and not hmac.compare_digest(given, f"Bearer {key}".encode()):  # constant time: no timing oracle
        raise Unauthorized()


class BodyLimit:
    """Pure ASGI middleware: a request body over `max_bytes` (declared or streamed) gets 413 before it is
    read into memory; responses pass through untouched."""

    def __init__(self, app: Any, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            return await self._too_large(scope, receive, send)
        seen, refused = 0, False

        async def limited() -> dict:
            nonlocal seen, refused
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_bytes and not refused:
                refused = True
                await self._too_large(scope, receive, send)
                return {"type": "http.disconnect"}  # the app stops reading; its own answer is dropped below
            return message

        async def guarded(message: dict) -> None:
            if not refused:
                await send(message)

        try:
            await self.app(scope, limited, guarded)
        except Exception:
            if not refused:  # the app's reaction to the cut-off body, after our 413
                raise

    async def _too_large(self, scope: dict, receive: Any, send: Any) -> None:
        response = error_response(413, f"request body over {self.max_bytes} bytes")
        await response(scope, receive, send)



# ---------------------------------------------------------------- helpers
def usage(gen: Generation) -> dict:
    return _usage(gen.reply.prompt_tokens, gen.reply.completion_tokens)


def _usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def sse(chunks: Iterator[dict], gen: Generation) -> StreamingResponse:
    """Server-sent events. The generation thread hands each chunk straight to the event loop: a sync
    iterator would cost a thread-pool round trip per token, taken from generation's GIL time."""
    async def body() -> AsyncIterator[str]:
        loop = asyncio.get_running_loop()
        pieces: asyncio.Queue = asyncio.Queue()

        def pump() -> None:
            try:
                for chunk in chunks:
                    loop.call_soon_threadsafe(pieces.put_nowait, chunk)
            finally:
                loop.call_soon_threadsafe(pieces.put_nowait, None)

        # a thread of its own: the loop's default executor has cpu_count + 4 threads, and a stream past
        # that many would get its first token only when an earlier stream ended
        threading.Thread(target=pump, name="sse-pump", daemon=True).start()
        try:
            while (chunk := await pieces.get()) is not None:
                yield f"data: {json.dumps(chunk, ensure_ascii=False)}\n\n"
            yield "data: [DONE]\n\n"
        finally:
            gen.cancel()  # the client went away (or all is sent): stop generating for it

    return StreamingResponse(body(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


def _head(kind: str, prefix: str, name: str) -> dict:
    return {"id": f"{prefix}-{uuid.uuid4().hex[:24]}", "object": kind, "created": int(time.time()), "model": name}


# ---------------------------------------------------------------- endpoints
async def health(request: Request) -> dict:
    # async: answered on the event loop, so it answers while every worker thread waits for the model
    return {"status": "ok", "model": request.app.state.served.name}


async def models(request: Request) -> dict:
    served: Served = request.app.state.served
    # the defaults a request's own fields override (repetition_penalty and top_k through extra_body)
    return {"object": "list", "data": [{"id": served.name, "object": "model", "created": int(time.time()),
                                        "owned_by": "llama2ft", "sampling_defaults": served.defaults.shown()}]}


def chat_completions(req: ChatRequest, request: Request) -> Any:
    served: Served = request.app.state.served
    samp = sampling_of(req, served.defaults)
    system = None
    pairs = []
    for m in req.messages:
        text = message_text(m.content)
        if m.role in ("system", "developer"):
            system = text
        else:
            pairs.append((m.role, text))
    turns = to_turns(pairs)
    gen = served.chat.stream(turns, samp, system)  # renders and checks the prompt before streaming
    head = _head("chat.completion.chunk", "chatcmpl", served.name)
    if req.stream:
        gen.start()  # a full queue is a 503 now, not an error inside a 200 stream
        def chunks() -> Iterator[dict]:
            yield {**head, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                                        "logprobs": None, "finish_reason": None}]}
            for piece in gen:
                yield {**head, "choices": [{"index": 0, "delta": {"content": piece}, "logprobs": None,
                                        "finish_reason": None}]}
            yield {**head, "choices": [{"index": 0, "delta": {}, "logprobs": None,
                                        "finish_reason": gen.reply.finish_reason}],
                   "usage": usage(gen)}
        return sse(chunks(), gen)
    gens = [gen, *(served.chat.stream(turns, choice_sampling(samp, j), system) for j in range(1, req.n))]
    generate_all(gens)
    scores = served.chat.score([g.prompt + g.token_ids for g in gens], req.top_logprobs or 0) if req.logprobs else None
    choices = [{"index": j, "message": {"role": "assistant", "content": g.reply.text},
                "logprobs": chat_logprobs(served.chat.tokenizer, g, scores[j], req.top_logprobs or 0)
                if scores is not None else None, "finish_reason": g.reply.finish_reason} for j, g in enumerate(gens)]
    return {**head, "object": "chat.completion", "choices": choices,
            "usage": _usage(gen.reply.prompt_tokens, sum(g.reply.completion_tokens for g in gens))}


def completions(req: CompletionRequest, request: Request) -> Any:
    served: Served = request.app.state.served
    samp = sampling_of(req, served.defaults)
    prompts = prompt_list(req)
    if not prompts or any(not (p.strip() if isinstance(p, str) else p) for p in prompts):
        raise UserError("prompt: the prompt is empty")
    head = _head("text_completion", "cmpl", served.name)
    if not req.stream:
        generate = (req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens) != 0
        choices = completion_choices(served.chat, prompts, samp, req.n, generate)
        top = req.logprobs or 0
        scores = served.chat.score([c.row for c in choices], top) if req.logprobs is not None else None
        return {**head, "choices": [completion_choice(served.chat, c, i, req.echo, samp.stop,
                                                      scores[i] if scores else None, top)
                                    for i, c in enumerate(choices)],
                "usage": _usage(sum(len(c.prompt) for c in choices[::req.n]),
                                sum(c.gen.reply.completion_tokens for c in choices if c.gen is not None))}
    gen = served.chat.stream_raw(prompts[0], samp)
    gen.start()
    def chunks() -> Iterator[dict]:
        for piece in gen:
            yield {**head, "choices": [{"index": 0, "text": piece, "logprobs": None, "finish_reason": None}]}
        yield {**head, "choices": [{"index": 0, "text": "", "logprobs": None,
                                    "finish_reason": gen.reply.finish_reason}], "usage": usage(gen)}
    return sse(chunks(), gen)
