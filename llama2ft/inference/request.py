"""One request to a model: its reply, its streamer (text pieces as they are generated, stop texts,
cancellation) and the errors that end it early. The generation engine (`engine.py`), its continuous
batching (`batching.py`) and the vLLM engine all hand tokens to these objects, so they live apart from
each of them."""
from __future__ import annotations

import queue
import threading
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Iterator, Optional, Protocol

import torch

from llama2ft.core.faults import pause_point
from llama2ft.inference.sampling import Sampling, cut_at_stop


class Host(Protocol):
    """What a request needs of the model answering it (`engine.ChatModel` is one)."""

    tokenizer: Any

    def enqueue(self, gen: "Generation", own_place: bool = True) -> Future: ...

    def generate_ids(self, prompts: list[list[int]], sampling: Sampling, max_new_tokens: int,
                     streamer: Any = None) -> list[list[int]]: ...


@dataclass
class Reply:
    text: str
    finish_reason: str = "stop"  # stop: the model wrote EOS; length: max_new_tokens ran out; cancelled
    prompt_tokens: int = 0
    completion_tokens: int = 0
    dropped_turns: int = 0  # oldest turns left out so that the prompt fits the context


class RequestEnded(Exception):
    """Raised by a request's streamer to end its generation early (it was cancelled, or a stop text came)."""


class _Cancelled(RequestEnded):
    pass


class QueueFull(Exception):
    """More requests are waiting for the model than `max_queue` allows: try again later."""

    def __init__(self, waiting: int, retry_after: int):
        super().__init__(f"the server is busy: {waiting} requests are waiting for the model; retry in {retry_after} s")
        self.retry_after = retry_after


class _StopText(RequestEnded):
    """Raised inside generate() to end it once a stop text has appeared."""


class Generation:
    """Iterate to receive the answer as text pieces while it is generated; `reply` holds the result after.

    Whitespace around a chat answer (the templates' stop text before EOS) is never shown; a plain completion
    (`raw`) keeps it, as OpenAI's completions do."""

    def __init__(self, chat: Host, prompt: list[int], sampling: Sampling, max_new_tokens: int,
                 dropped: int, raw: bool = False):
        self.chat, self.prompt, self.sampling, self.max_new_tokens = chat, prompt, sampling, max_new_tokens
        self.raw = raw
        self.ended_by_eos = False  # the model wrote EOS (not among token_ids; the API's logprobs show it)
        self.score_top: Optional[int] = None  # engine=vllm: a scoring request (its prompt's log-probabilities)
        self.prompt_logprobs: Any = None  # engine=vllm: vLLM's prompt_logprobs of a scoring request
        self.reply = Reply("", "stop", len(prompt), 0, dropped)
        self._ids: list[int] = []
        self._queue: "queue.Queue[Optional[str]]" = queue.Queue()
        self._cancel = threading.Event()
        self._error: Optional[BaseException] = None
        self._shown = ""
        self._started = False
        self._job: Optional[Future] = None
        self._final: Optional[str] = None  # the answer cut at a stop text
        self._hold = max((len(s) for s in sampling.stop), default=1) - 1  # may be the start of a stop text

    # -- called by transformers' generate (BaseStreamer protocol) in the worker thread
    def put(self, value: torch.Tensor) -> None:
        if not self._started:  # generate() first hands over the prompt
            return self.accept(None)
        for i in value.reshape(-1).tolist():
            self.accept(i)

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def accept(self, token: Optional[int]) -> None:
        """Take the next answer token (None: the prompt was read) on the generating thread; raises
        RequestEnded when the request must end (cancelled, or a stop text has appeared)."""
        if self._cancel.is_set():
            raise _Cancelled()
        if token is None:
            self._started = True
            return
        if token == self.chat.tokenizer.eos_token_id:
            self.ended_by_eos = True
            return
        self._ids.append(token)
        text = self._text()
        if text.endswith("\ufffd"):  # half of a multi-byte character: wait for the rest
            return
        visible = text if self.raw else text.strip()
        if self.sampling.stop:
            self._final = cut_at_stop(visible, self.sampling.stop, strip=not self.raw)
            if self._final is not None:
                raise _StopText()
            visible = visible[: len(visible) - self._hold]
        if visible.startswith(self._shown) and len(visible) > len(self._shown):
            self._queue.put(visible[len(self._shown):])
            self._shown = visible

    def end(self) -> None:
        pass

    def _text(self) -> str:
        return self.chat.tokenizer.decode(self._ids, skip_special_tokens=True)

    # -- consumer side
    def start(self, own_place: bool = True) -> None:
        """Take a place in the model's queue now (raises QueueFull when it is full); iterating starts
        it too, but a server must know before it answers with a stream. `own_place=False`: a further choice
        of a request already admitted, which waits without counting against max_queue (a request is refused
        whole or served whole)."""
        if self._job is None:
            self._job = self.chat.enqueue(self, own_place)

    def _run(self) -> None:
        """Runs on the model's generation thread (max_batch=1)."""
        try:
            self.chat.generate_ids([self.prompt], self.sampling, self.max_new_tokens, streamer=self)
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer by finish()
            return self.finish(exc)
        self.finish(None)

    def finish(self, exc: Optional[BaseException], cancelled: bool = False) -> None:
        """The generating side is done with this request (`exc` is re-raised in the consumer thread)."""
        if cancelled or isinstance(exc, _Cancelled):
            self.reply.finish_reason = "cancelled"
        elif exc is not None and not isinstance(exc, _StopText):
            self._error = exc
        self._queue.put(None)

    def __iter__(self) -> Iterator[str]:
        self.start()
        job = self._job
        try:
            while (piece := self._queue.get()) is not None:
                yield piece
                pause_point("stream")  # tests: hold a request in flight (core/faults.py)
        finally:
            self._cancel.set()  # a consumer that stops early (client gone) stops the generation too
            if not job.cancel():  # still queued: dropped; running: it stops at its next token
                job.result()
        if self._error is not None:
            raise self._error
        self.reply.completion_tokens = len(self._ids)
        if self.reply.finish_reason != "cancelled":
            full = len(self._ids) >= self.max_new_tokens and self._final is None
            self.reply.finish_reason = "length" if full else "stop"
        text = self._text()
        self.reply.text = self._final if self._final is not None else text if self.raw else text.strip()
        if self.reply.text != self._shown and self.reply.text.startswith(self._shown):
            yield self.reply.text[len(self._shown):]

    @property
    def token_ids(self) -> list[int]:
        """The answer's token ids so far (EOS left out; the tokens of a stop text included)."""
        return list(self._ids)

    def cancel(self) -> None:
        """Stop generating (a client went away); the iterator then ends with finish_reason "cancelled"."""
        self._cancel.set()

    def run(self) -> Reply:
        for _ in self:
            pass
        return self.reply
