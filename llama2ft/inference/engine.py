"""The generation core behind chat, web, API and evaluation: one template, one sampler, one streamer.

Prompts are rendered by `data.templates.encode_prompt`, i.e. the training tokenization of the conversation up
to the start of the answer. Each request gets its own streamer (a `Generation`, `inference/request.py`: no
cross-talk between users). With `max_batch` > 1 requests share the model through continuous batching
(`inference/batching.py`: each forward pass runs one token of every active request); with 1 they take
turns on one long-lived generation thread, first come, first served (see `ChatModel.submit`).
"""
from __future__ import annotations

import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Union

import torch

from llama2ft.core.errors import UserError
from llama2ft.data.dialogue import Turn
from llama2ft.data.templates import Template, encode_prompt, get_template
from llama2ft.inference.batching import Batcher
from llama2ft.inference.decoding import OpenAIPenalties
from llama2ft.inference.logprobs import TokenScore, score_sequences
from llama2ft.inference.request import Generation, QueueFull, Reply
from llama2ft.inference.sampling import Sampling, cut_at_stop, seed_bits


@dataclass
class ChatModel:
    """A loaded model with its tokenizer and template."""

    model: Any
    tokenizer: Any
    template: Template
    context_length: int
    name: str = "model"
    max_queue: Optional[int] = None  # requests allowed to wait for the model (None: no limit)
    max_batch: int = 1  # requests generated together (continuous batching); 1: one at a time
    _jobs: "queue.Queue[Optional[tuple[Callable[[], Any], Future]]]" = field(default_factory=queue.Queue, repr=False)
    _worker: Optional[threading.Thread] = field(default=None, repr=False)
    _worker_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _batcher: Optional[Batcher] = field(default=None, repr=False)
    _waiting: int = field(default=0, repr=False)
    _job_seconds: float = field(default=1.0, repr=False)  # running mean, for Retry-After

    def enqueue(self, gen: Generation, own_place: bool = True) -> Future:
        """Queue a request: into the running batch when max_batch > 1, else on the one generation thread
        (`own_place`: see `Generation.start`)."""
        if self.max_batch <= 1:
            return self.submit(gen._run, own_place)
        with self._worker_lock:
            if self._batcher is None:
                self._batcher = Batcher(self.model, self.tokenizer.eos_token_id, self.max_batch, self.max_queue,
                                        self.name)
        return self._batcher.add(gen, own_place)

    def submit(self, fn: Callable[[], Any], own_place: bool = True) -> Future:
        """Run `fn` on the model's one generation thread, after the jobs already waiting.

        One generation at a time (the max_batch=1 path; `enqueue` batches otherwise). The thread lives as long as the model
        because CUDA work in a fresh thread runs slowly at first (measured on an H100: the first
        generate in a new thread at 14 tokens/s, later ones at 40, the main thread at 33)."""
        with self._worker_lock:
            if own_place and self.max_queue is not None and self._waiting >= self.max_queue:
                raise QueueFull(self._waiting, max(1, round(self._job_seconds * (self._waiting + 1))))
            if self._worker is None:
                self._worker = threading.Thread(target=self._serve, name=f"generate-{self.name}", daemon=True)
                self._worker.start()
            self._waiting += 1
        job: Future = Future()
        self._jobs.put((fn, job))
        return job

    def close(self) -> None:
        """Stop the generation thread once the waiting jobs are done (it holds the model alive)."""
        with self._worker_lock:
            if self._worker is not None:
                self._jobs.put(None)
                self._worker.join()
                self._worker = None
            if self._batcher is not None:
                self._batcher.close()
                self._batcher = None

    def _serve(self) -> None:
        while (item := self._jobs.get()) is not None:
            fn, job = item
            with self._worker_lock:
                self._waiting -= 1
            if not job.set_running_or_notify_cancel():
                continue
            started = time.monotonic()
            try:
                job.set_result(fn())
            except BaseException as exc:  # handed to whoever waits on the job
                job.set_exception(exc)
            self._job_seconds = 0.8 * self._job_seconds + 0.2 * (time.monotonic() - started)

    def template_for(self, system: Optional[str]) -> Template:
        return self.template if system is None else get_template(self.template.name, system or None)

    def prompt_ids(self, turns: list[Turn], max_new_tokens: int, system: Optional[str] = None
                   ) -> tuple[list[int], int, int]:
        """(prompt ids, number of oldest turns dropped to fit, tokens left for the answer)."""
        if not turns or turns[-1].role != "human":
            raise UserError("the conversation must end with a user message")
        if not turns[-1].text.strip():
            raise UserError("the message is empty")
        template = self.template_for(system)
        reserve = min(max_new_tokens, self.context_length // 4)  # room kept for the answer
        dropped = 0
        while True:
            ids = encode_prompt(template, self.tokenizer, turns[dropped:])
            if len(ids) + reserve <= self.context_length:
                break
            nxt = next((i for i in range(dropped + 1, len(turns)) if turns[i].role == "human"), None)
            if nxt is None:
                raise UserError(f"the message is too long: its prompt is {len(ids)} tokens and the model's context "
                                f"is {self.context_length} (with {reserve} kept for the answer)")
            dropped = nxt
        return ids, dropped, min(max_new_tokens, self.context_length - len(ids))

    def stream(self, turns: list[Turn], sampling: Sampling, system: Optional[str] = None) -> Generation:
        ids, dropped, room = self.prompt_ids(turns, sampling.max_new_tokens, system)
        return Generation(self, ids, sampling, room, dropped)

    def chat(self, turns: list[Turn], sampling: Sampling, system: Optional[str] = None) -> Reply:
        return self.stream(turns, sampling, system).run()

    def raw_prompt_ids(self, prompt: Union[str, list[int]], room: int = 1) -> list[int]:
        """A plain completion prompt (no template) as token ids: a text gets BOS in front, as in continued
        pre-training, unless it starts with `<s>` itself (one BOS, never two); token ids are taken as they
        are. `room`: tokens that must still fit the context after it."""
        if isinstance(prompt, str):
            ids = self.tokenizer(prompt, add_special_tokens=False)["input_ids"]
            if ids[:1] != [self.tokenizer.bos_token_id]:
                ids = [self.tokenizer.bos_token_id, *ids]
        else:
            ids = list(prompt)
            bad = [t for t in ids if not 0 <= t < len(self.tokenizer)]
            if bad:
                raise UserError(f"prompt: token id {bad[0]} is not in the model's vocabulary of {len(self.tokenizer)}")
        if len(ids) + room > self.context_length:
            raise UserError(f"the prompt is {len(ids)} tokens; the model's context is {self.context_length}"
                            + (f" (with {room} kept for the answer)" if room else ""))
        return ids

    def stream_raw(self, prompt: Union[str, list[int]], sampling: Sampling, raw: bool = True) -> Generation:
        """Plain completion (no template) of a text or of token ids (`raw_prompt_ids`); the answer's text
        keeps its whitespace unless `raw=False`."""
        ids = self.raw_prompt_ids(prompt)
        return Generation(self, ids, sampling, min(sampling.max_new_tokens, self.context_length - len(ids)), 0,
                          raw=raw)

    def score(self, rows: list[list[int]], top: int = 0) -> list[list[TokenScore]]:
        """Each row's token log-probabilities (and `top` alternatives), under the model's own distribution;
        run on the generation thread, after the jobs waiting for it."""
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        return self.submit(lambda: score_sequences(self.model, rows, top, pad)).result()

    def chat_batch(self, conversations: list[list[Turn]], sampling: Sampling, system: Optional[str] = None,
                   batch_size: int = 8) -> list[Reply]:
        """Answers to many conversations (evaluation): through continuous batching when max_batch > 1 (each
        answer as if alone), else `batch_size` at a time with left padding."""
        if self.max_batch > 1:
            gens = [self.stream(c, sampling, system) for c in conversations]
            for gen in gens:
                gen.start()
            return [gen.run() for gen in gens]
        replies: list[Reply] = []
        for start in range(0, len(conversations), batch_size):
            chunk = [self.prompt_ids(c, sampling.max_new_tokens, system) for c in
                     conversations[start:start + batch_size]]
            room = min(r for _, _, r in chunk)
            rows = self.submit(lambda: self.generate_ids([ids for ids, _, _ in chunk], sampling, room)).result()
            for (ids, dropped, _), out in zip(chunk, rows):
                replies.append(self.reply(ids, out, room, dropped, sampling.stop))
        return replies

    def reply(self, prompt: list[int], out: list[int], room: int, dropped: int, stop: tuple[str, ...] = ()
              ) -> Reply:
        """The answer in `out` (new ids of `generate_ids`): cut at EOS, decoded, cut at a stop text."""
        eos, pad = self.tokenizer.eos_token_id, self.tokenizer.pad_token_id
        stopped = eos in out
        if stopped:
            out = out[: out.index(eos)]
        elif pad != eos:
            while out and out[-1] == pad:
                out = out[:-1]
        text = self.tokenizer.decode(out, skip_special_tokens=True).strip()
        cut = cut_at_stop(text, stop)
        if cut is not None:
            text, stopped = cut, True
        return Reply(text, "stop" if stopped or len(out) < room else "length", len(prompt), len(out), dropped)

    @torch.no_grad()
    def generate_ids(self, prompts: list[list[int]], sampling: Sampling, max_new_tokens: int,
                     streamer: Any = None) -> list[list[int]]:
        """Left-padded batch generation; returns the new token ids of each prompt (EOS and padding kept)."""
        self.model.eval()
        device = next(self.model.parameters()).device
        width = max(len(p) for p in prompts)
        pad = self.tokenizer.pad_token_id
        ids = torch.full((len(prompts), width), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, p in enumerate(prompts):
            ids[i, width - len(p):] = torch.as_tensor(p)
            mask[i, width - len(p):] = 1
        if sampling.seed is not None and not sampling.greedy:
            torch.manual_seed(seed_bits(sampling.seed))
            if torch.cuda.is_available():
                torch.cuda.manual_seed_all(seed_bits(sampling.seed))
        from transformers import LogitsProcessorList

        processors = LogitsProcessorList([OpenAIPenalties(sampling, width)] if sampling.openai_penalties else [])
        out = self.model.generate(input_ids=ids.to(device), attention_mask=mask.to(device),
                                  max_new_tokens=max_new_tokens, eos_token_id=self.tokenizer.eos_token_id,
                                  pad_token_id=pad, streamer=streamer, logits_processor=processors,
                                  **sampling.generate_kwargs())
        return out[:, width:].tolist()
