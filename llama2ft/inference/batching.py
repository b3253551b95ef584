"""Continuous batching: one thread runs every active request's next token in one forward pass.

Waiting requests join the running batch after their prefill (those that arrive together are prefilled in
one forward pass); each step decodes one token for every active request; a request that ends
(EOS, length, a stop text, cancellation) leaves at once and frees its place for the next. At most
`max_batch` requests run together; at most `max_queue` wait (more: QueueFull).

The batch keeps one KV cache with left padding (grown in place, not re-copied every step): joining
caches are padded on the left to the batch's length (or the batch's to theirs), padded positions are
masked, and every row gets its own position ids, so each row computes what it would alone up to float
rounding (greedy answers equal the solo ones: tests/test_batching.py, bench/serve_load.py). Token choice, stop texts, streaming and cancellation stay per request
(`decoding.next_token`, the request's `Generation`).
"""
from __future__ import annotations

import threading
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Optional

import torch

from llama2ft.inference.decoding import generator_for, next_token
from llama2ft.inference.request import Generation, QueueFull, RequestEnded


@dataclass
class _Row:
    gen: Generation
    job: Future
    seen: list[int]  # prompt + answer so far (the repetition penalty's ids)
    generator: Optional[torch.Generator]
    made: int = 0  # answer tokens so far
    started: float = field(default_factory=time.monotonic)


class Batcher:
    """The continuous-batching scheduler of one `ChatModel` (see the module docstring)."""

    def __init__(self, model: Any, eos: int, max_batch: int, max_queue: Optional[int], name: str = "model"):
        self.model, self.eos, self.max_batch, self.max_queue = model, eos, max_batch, max_queue
        self._waiting: deque[tuple[Generation, Future]] = deque()
        self._rows: list[_Row] = []
        self._cache: Any = None
        self._mask: Optional[torch.Tensor] = None  # [rows, cached length]: 1 where a real token is cached
        self._wake = threading.Condition()
        self._closing = False
        self.most = 0  # the largest batch run so far (for tests and benchmarks)
        self._seconds = 1.0  # running mean of a request's time, for Retry-After
        suppress = getattr(getattr(model, "generation_config", None), "suppress_tokens", None)
        self._suppress = list(suppress or ())
        self._thread = threading.Thread(target=self._serve, name=f"batch-{name}", daemon=True)
        self._thread.start()

    # ---------------------------------------------------------------- request side
    def add(self, gen: Generation, own_place: bool = True) -> Future:
        job: Future = Future()
        with self._wake:
            if own_place and self.max_queue is not None and len(self._waiting) >= self.max_queue:
                n = len(self._waiting)
                raise QueueFull(n, max(1, round(self._seconds * (n + 1) / self.max_batch)))
            self._waiting.append((gen, job))
            self._wake.notify()
        return job

    def close(self) -> None:
        """Stop the thread once every waiting and running request is done."""
        with self._wake:
            self._closing = True
            self._wake.notify()
        self._thread.join()

    # ---------------------------------------------------------------- the scheduler thread
    def _serve(self) -> None:
        while True:
            with self._wake:
                while not self._waiting and not self._rows and not self._closing:
                    self._wake.wait()
                if self._closing and not self._waiting and not self._rows:
                    return
                joining = []
                while self._waiting and len(self._rows) + len(joining) < self.max_batch:
                    gen, job = self._waiting.popleft()
                    if job.set_running_or_notify_cancel():  # a request cancelled while waiting is dropped
                        joining.append((gen, job))
            try:
                with torch.no_grad():
                    if joining:
                        self._join(joining)
                    self._drop_finished()
                    if self._rows:
                        self.most = max(self.most, len(self._rows))
                        self._step()
                        self._drop_finished()
            except BaseException as exc:  # noqa: BLE001 - every running request gets the error, the thread lives
                for row in self._rows:
                    self._finish(row, exc)
                self._rows, self._cache, self._mask = [], None, None

    def _join(self, joining: list[tuple[Generation, Future]]) -> None:
        """Prefill the joining requests together (left-padded, masked, own positions), take each one's first
        token, and add their caches to the batch's."""
        from transformers import DynamicCache

        rows = []
        for gen, job in joining:
            row = _Row(gen, job, list(gen.prompt), generator_for(gen.sampling))
            try:
                gen.accept(None)  # the prompt: nothing to show (raises when the request was cancelled meanwhile)
                rows.append(row)
            except RequestEnded as end:
                self._finish(row, end)
        if not rows:
            return
        width = max(len(r.seen) for r in rows)
        device = self._device()
        ids = torch.zeros((len(rows), width), dtype=torch.long, device=device)
        mask = torch.zeros_like(ids)
        for i, r in enumerate(rows):
            ids[i, width - len(r.seen):] = torch.tensor(r.seen, device=device)
            mask[i, width - len(r.seen):] = 1
        cache = DynamicCache(config=self.model.config)
        try:
            out = self.model(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(1) - 1).clamp(min=0),
                             cache=cache, use_cache=True, logits_to_keep=1)
        except BaseException as exc:  # noqa: BLE001 - these requests fail, the running ones go on
            for r in rows:
                self._finish(r, exc)
            return
        keep = [i for i, r in enumerate(rows) if self._take(r, out.logits[i, -1].float())]
        if keep:
            index = torch.tensor(keep, device=device)
            self._merge([rows[i] for i in keep], [(layer.keys[index], layer.values[index]) for layer in cache.layers],
                        mask[index])

    def _merge(self, rows: list[_Row], layers: list[tuple[torch.Tensor, torch.Tensor]], mask: torch.Tensor) -> None:
        if not self._rows:
            self._rows, self._mask, self._cache = rows, mask, _growing_cache(layers)
            return
        width = max(self._mask.shape[1], mask.shape[1])
        merged = []
        for old, (keys, values) in zip(self._cache.layers, layers):
            merged.append((torch.cat([_pad_left(old.keys, width), _pad_left(keys, width)]),
                           torch.cat([_pad_left(old.values, width), _pad_left(values, width)])))
        self._cache = _growing_cache(merged)
        self._mask = torch.cat([_pad_left(self._mask, width), _pad_left(mask, width)])
        self._rows += rows

    def _step(self) -> None:
        """One token for every row."""
        device = self._mask.device
        last = torch.tensor([[row.seen[-1]] for row in self._rows], device=device)
        positions = self._mask.sum(dim=1, keepdim=True)  # each row's own next position (padding not counted)
        self._mask = torch.cat([self._mask, torch.ones_like(last)], dim=1)
        out = self.model(input_ids=last, attention_mask=self._mask, position_ids=positions,
                         cache=self._cache, use_cache=True, logits_to_keep=1)
        logits = out.logits[:, -1].float()
        for i, row in enumerate(self._rows):
            self._take(row, logits[i])

    def _take(self, row: _Row, logits: torch.Tensor) -> bool:
        """Choose and deliver the row's next token; False when the row has finished."""
        if row.gen.cancelled:
            self._finish(row, None, cancelled=True)
            return False
        try:
            token = next_token(logits, torch.tensor(row.seen, device=logits.device), row.gen.sampling, row.generator,
                               self._suppress, len(row.gen.prompt))
        except Exception as exc:  # noqa: BLE001 - only this request fails (a joining one is in no batch yet)
            self._finish(row, exc)
            return False
        row.seen.append(token)
        row.made += 1
        try:
            row.gen.accept(token)
        except RequestEnded as end:
            self._finish(row, end)
            return False
        if token == self.eos or row.made >= row.gen.max_new_tokens:
            self._finish(row, None)
            return False
        return True

    def _finish(self, row: _Row, exc: Optional[BaseException], cancelled: bool = False) -> None:
        row.made = -1  # marks the row for `_drop_finished`
        row.gen.finish(exc, cancelled)
        self._seconds = 0.8 * self._seconds + 0.2 * (time.monotonic() - row.started)
        row.job.set_result(None)

    def _drop_finished(self) -> None:
        keep = [i for i, row in enumerate(self._rows) if row.made >= 0]
        if len(keep) == len(self._rows):
            return
        if not keep:
            self._rows, self._cache, self._mask = [], None, None
            return
        index = torch.tensor(keep, device=self._mask.device)
        mask = self._mask[index]
        lead = int((mask.sum(dim=0) == 0).long().cumprod(dim=0).sum())  # columns that are padding in every row
        self._cache = _growing_cache([(layer.keys[index, :, lead:], layer.values[index, :, lead:])
                                      for layer in self._cache.layers])
        self._mask = mask[:, lead:]
        self._rows = [self._rows[i] for i in keep]

    def _device(self) -> torch.device:
        return next(self.model.parameters()).device


def _pad_left(t: torch.Tensor, width: int) -> torch.Tensor:
    """Zeros on the left of the sequence axis (-2 for cache tensors, -1 for masks) up to `width`."""
    axis = -1 if t.dim() == 2 else -2
    missing = width - t.shape[axis]
    if missing <= 0:
        return t
    shape = list(t.shape)
    shape[axis] = missing
    return torch.cat([t.new_zeros(shape), t], dim=axis)


def _growing_cache(layers: list[tuple[torch.Tensor, torch.Tensor]]) -> Any:
    """The batch's KV cache, filled with `layers` (keys, values per layer)."""
    from transformers.cache_utils import Cache

    cache = Cache(layers=[_new_layer() for _ in layers])
    for layer, (keys, values) in zip(cache.layers, layers):
        layer.update(keys, values)
    return cache


def _growing_layer_class() -> type:
    from transformers.cache_utils import DynamicLayer

    class GrowingLayer(DynamicLayer):
        """A DynamicLayer whose tensors live in a buffer with room to grow: appending a token writes one
        column (DynamicLayer concatenates, i.e. copies the whole cache of every row, at every step)."""

        def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
                   ) -> tuple[torch.Tensor, torch.Tensor]:
            used = 0 if not self.is_initialized else self.keys.shape[-2]
            need = used + key_states.shape[-2]
            if not self.is_initialized or need > self._room.shape[-2]:
                self.is_initialized, self.device = True, key_states.device
                shape = list(key_states.shape)
                shape[-2] = max(need + 64, 2 * need)
                room_k, room_v = key_states.new_empty(shape), value_states.new_empty(shape)
                if used:
                    room_k[..., :used, :], room_v[..., :used, :] = self.keys, self.values
                self._room, self._room_v = room_k, room_v
            self._room[..., used:need, :] = key_states
            self._room_v[..., used:need, :] = value_states
            self.keys, self.values = self._room[..., :need, :], self._room_v[..., :need, :]
            return self.keys, self.values

    return GrowingLayer


_GrowingLayer: Any = None


def _new_layer() -> Any:
    global _GrowingLayer
    if _GrowingLayer is None:
        _GrowingLayer = _growing_layer_class()
    return _GrowingLayer()
