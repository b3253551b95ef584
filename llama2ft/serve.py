"""llama2ft-serve: an OpenAI-compatible HTTP API on the training template.

    llama2ft-serve run=outputs/train/RUN          # http://127.0.0.1:8000/v1, e.g. with the openai client:
    OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="unused").chat.completions.create(...)

Endpoints: POST /v1/chat/completions and /v1/completions (both with `stream`), GET /v1/models, /health.
Extra sampling fields `top_k` and `repetition_penalty` go in the request body (openai: `extra_body=`).
Concurrent requests wait their turn for the model (the generation core's lock): each is answered as if
it were alone, and one request's tokens never reach another's stream.
"""
# No `from __future__ import annotations`: FastAPI reads the request models from real annotations.
import asyncio
import json
import sys
import time
import uuid
from typing import Any, AsyncIterator, Iterator, Optional, Union

import hydra
from omegaconf import DictConfig

from llama2ft import CONFIG_DIR
from llama2ft.errors import UserError, exit_on_user_error
from llama2ft.generation import ChatModel, Generation, Sampling, message_text, to_turns
from llama2ft.talk import check, load, port_problems, quote_text_overrides, warn_if_exposed


def _error(status: int, message: str, kind: str = "invalid_request_error", param: Optional[str] = None) -> Any:
    from fastapi.responses import JSONResponse

    return JSONResponse(status_code=status, content={"error": {"message": message, "type": kind, "param": param,
                                                               "code": None}})


def create_app(chat: ChatModel, defaults: Sampling, served_name: str, api_key: Optional[str] = None) -> Any:
    from fastapi import Depends, FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import StreamingResponse
    from pydantic import BaseModel, ConfigDict

    class Message(BaseModel):
        model_config = ConfigDict(extra="allow")
        role: str
        content: Union[str, list, None] = None

    class Common(BaseModel):
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

    app = FastAPI(title="llama2ft", version="1")

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> Any:
        parts = [f"{'.'.join(str(x) for x in e['loc'][1:]) or 'body'}: {e['msg']}" for e in exc.errors()]
        return _error(400, "; ".join(parts) or "invalid request")

    @app.exception_handler(UserError)
    async def _user(_: Request, exc: UserError) -> Any:
        return _error(400, str(exc))

    class Unauthorized(Exception):
        pass

    @app.exception_handler(Unauthorized)
    async def _unauthorized(_: Request, exc: Unauthorized) -> Any:
        return _error(401, "invalid or missing API key (Authorization: Bearer ...)", "authentication_error")

    def authorized(request: Request) -> None:
        # a dependency, not an HTTP middleware: Starlette's middleware re-wraps every streamed chunk
        if api_key and request.headers.get("authorization", "") != f"Bearer {api_key}":
            raise Unauthorized()

    v1 = [Depends(authorized)]

    def sampling_of(req: Common) -> Sampling:
        if req.n != 1:
            raise UserError("n: only n=1 is supported")
        given = req.max_completion_tokens or req.max_tokens
        samp = Sampling(
            temperature=defaults.temperature if req.temperature is None else req.temperature,
            top_p=defaults.top_p if req.top_p is None else req.top_p,
            top_k=defaults.top_k if req.top_k is None else req.top_k,
            repetition_penalty=defaults.repetition_penalty if req.repetition_penalty is None else req.repetition_penalty,
            max_new_tokens=defaults.max_new_tokens if given is None else given,
            do_sample=defaults.do_sample, seed=req.seed if req.seed is not None else defaults.seed,
            stop=(req.stop,) if isinstance(req.stop, str) else tuple(req.stop or ()))
        problems = samp.problems()
        if problems:
            raise UserError("; ".join(p.replace("max_new_tokens", "max_tokens") for p in problems))
        return samp

    def usage(gen: Generation) -> dict:
        r = gen.reply
        return {"prompt_tokens": r.prompt_tokens, "completion_tokens": r.completion_tokens,
                "total_tokens": r.prompt_tokens + r.completion_tokens}

    def sse(chunks: Iterator[dict], gen: Generation) -> StreamingResponse:
        """Server-sent events. The generation thread hands each chunk straight to the event loop: a
        sync iterator would cost a thread-pool round trip per token, taken from generation's GIL time."""
        async def body() -> AsyncIterator[str]:
            loop = asyncio.get_running_loop()
            pieces: asyncio.Queue = asyncio.Queue()

            def pump() -> None:
                try:
                    for chunk in chunks:
                        loop.call_soon_threadsafe(pieces.put_nowait, chunk)
                finally:
                    loop.call_soon_threadsafe(pieces.put_nowait, None)

            loop.run_in_executor(None, pump)
            try:
                while (chunk := await pieces.get()) is not None:
                    yield f"data: {json.dumps(chunk, ensure_ascii=False)}\n\n"
                yield "data: [DONE]\n\n"
            finally:
                gen.cancel()  # the client went away (or all is sent): stop generating for it

        return StreamingResponse(body(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok", "model": served_name}

    @app.get("/v1/models", dependencies=v1)
    def models() -> dict:
        return {"object": "list", "data": [{"id": served_name, "object": "model", "created": int(time.time()),
                                            "owned_by": "llama2ft"}]}

    @app.post("/v1/chat/completions", dependencies=v1)
    def chat_completions(req: ChatRequest) -> Any:
        samp = sampling_of(req)
        system = None
        pairs = []
        for m in req.messages:
            text = message_text(m.content)
            if m.role in ("system", "developer"):
                system = text
            else:
                pairs.append((m.role, text))
        gen = chat.stream(to_turns(pairs), samp, system)  # renders and checks the prompt before any streaming
        cid, created = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())
        head = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": served_name}
        if req.stream:
            def chunks() -> Iterator[dict]:
                yield {**head, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                                            "finish_reason": None}]}
                for piece in gen:
                    yield {**head, "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}]}
                yield {**head, "choices": [{"index": 0, "delta": {}, "finish_reason": gen.reply.finish_reason}],
                       "usage": usage(gen)}
            return sse(chunks(), gen)
        reply = gen.run()
        return {**head, "object": "chat.completion",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": reply.text},
                             "finish_reason": reply.finish_reason}], "usage": usage(gen)}

    @app.post("/v1/completions", dependencies=v1)
    def completions(req: CompletionRequest) -> Any:
        samp = sampling_of(req)
        prompts = [req.prompt] if isinstance(req.prompt, str) else req.prompt
        if len(prompts) != 1:
            raise UserError("prompt: give one prompt (a string)")
        if not prompts[0].strip():
            raise UserError("prompt: the prompt is empty")
        gen = chat.stream_raw(prompts[0], samp)
        head = {"id": f"cmpl-{uuid.uuid4().hex[:24]}", "object": "text_completion", "created": int(time.time()),
                "model": served_name}
        if req.stream:
            def chunks() -> Iterator[dict]:
                for piece in gen:
                    yield {**head, "choices": [{"index": 0, "text": piece, "logprobs": None, "finish_reason": None}]}
                yield {**head, "choices": [{"index": 0, "text": "", "logprobs": None,
                                            "finish_reason": gen.reply.finish_reason}], "usage": usage(gen)}
            return sse(chunks(), gen)
        reply = gen.run()
        return {**head, "choices": [{"index": 0, "text": reply.text, "logprobs": None,
                                     "finish_reason": reply.finish_reason}], "usage": usage(gen)}

    return app


def run_serve(cfg: DictConfig) -> None:
    extra = []
    extra += port_problems(cfg.port)
    spec, samp = check(cfg, extra)
    warn_if_exposed(str(cfg.host), bool(cfg.api_key), "the API", "api_key")
    chat = load(spec)
    import uvicorn

    name = str(cfg.served_name or chat.name)
    app = create_app(chat, samp, name, cfg.api_key)
    print(f"llama2ft-serve: {name} on http://{cfg.host}:{cfg.port}/v1", flush=True)
    uvicorn.run(app, host=str(cfg.host), port=int(cfg.port), log_level="warning")


@hydra.main(config_path=str(CONFIG_DIR), config_name="serve", version_base="1.3")
@exit_on_user_error
def _hydra_main(cfg: DictConfig) -> None:
    run_serve(cfg)


def main() -> None:
    sys.argv[1:] = quote_text_overrides(sys.argv[1:])
    _hydra_main()


if __name__ == "__main__":
    sys.exit(main())
