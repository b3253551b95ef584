"""`engine=vllm`: vLLM generates, llama2ft still renders the prompts (GPU only; the optional `vllm` extra).

vLLM is given token ids, never text: the prompt is `data.templates.encode_prompt`'s training prefix, as
with the transformers engine. A merged folder is served as it is; a base with a LoRA adapter is served
without merging, through vLLM's LoRA support (one `LoRARequest` on every request). Streaming, stop texts,
cancellation and the reply come from the same `Generation` objects as the transformers engine: a thread
steps vLLM's engine and hands each new token id to its request. vLLM does its own continuous batching;
`max_batch` becomes its `max_num_seqs`.

Unmeasured and untested against a real vLLM here (no GPU on the development machine): the tests check
the arguments built for it and the errors without it (tests/test_vllm_engine.py).
"""
from __future__ import annotations

import importlib.util
import itertools
import json
import threading
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from llama2ft.core.errors import UserError
from llama2ft.inference.engine import ChatModel
from llama2ft.inference.model_choice import ModelSource, Resolved
from llama2ft.inference.logprobs import TokenScore
from llama2ft.inference.request import Generation, QueueFull, RequestEnded
from llama2ft.inference.sampling import Sampling, seed_bits

ENGINES = ("transformers", "vllm")
INSTALL_HINT = "pip install 'llama2ft[vllm]'"


def require_vllm(cuda_available: Optional[bool] = None) -> None:
    """One clear UserError when vLLM cannot run here: not installed, or no CUDA GPU."""
    if importlib.util.find_spec("vllm") is None:
        raise UserError(f"engine=vllm needs the vllm package, which is not installed ({INSTALL_HINT}); "
                        "or use engine=transformers")
    if cuda_available is None:
        import torch

        cuda_available = torch.cuda.is_available()
    if not cuda_available:
        raise UserError("engine=vllm needs a CUDA GPU and none is visible; use engine=transformers on this machine")


def engine_args(r: Resolved, source: ModelSource, max_batch: int) -> dict[str, Any]:
    """Keyword arguments of vLLM's `EngineArgs` for a merged folder (no adapter) or a base + LoRA adapter:
    the resolved paths, and the `model` node's dtype, revision and trust_remote_code."""
    args: dict[str, Any] = {"model": r.base, "tokenizer": r.tokenizer, "dtype": source.dtype,
                            "max_num_seqs": max_batch, "trust_remote_code": source.trust_remote_code, "seed": 0}
    if source.revision is not None:
        args["revision"] = source.revision
    if r.adapter is not None:
        args.update(enable_lora=True, max_loras=1, max_lora_rank=_lora_rank(r.adapter))
    return args


def _lora_rank(adapter: str) -> int:
    """The adapter's rank (vLLM sizes its LoRA buffers by `max_lora_rank`)."""
    config = json.loads((Path(adapter) / "adapter_config.json").read_text(encoding="utf-8"))
    return int(config.get("r", 8))


def lora_request_args(adapter: str) -> dict[str, Any]:
    """Keyword arguments of vLLM's `LoRARequest` for the one adapter served."""
    return {"lora_name": "adapter", "lora_int_id": 1, "lora_path": str(Path(adapter).resolve())}


def sampling_args(sampling: Sampling, max_tokens: int, eos: int) -> dict[str, Any]:
    """Keyword arguments of vLLM's `SamplingParams`: our settings under vLLM's names (temperature 0 is
    greedy there; top_k -1 is off). Stop texts are applied by `Generation`, which sees every token."""
    greedy = sampling.greedy
    return {"temperature": 0.0 if greedy else sampling.temperature, "top_p": 1.0 if greedy else sampling.top_p,
            "top_k": -1 if greedy or not sampling.top_k else sampling.top_k,
            "repetition_penalty": sampling.repetition_penalty, "frequency_penalty": sampling.frequency_penalty,
            "presence_penalty": sampling.presence_penalty, "max_tokens": max_tokens,
            "seed": None if sampling.seed is None else seed_bits(sampling.seed),
            "stop_token_ids": [eos], "skip_special_tokens": True}


def score_args(top: int) -> dict[str, Any]:
    """`SamplingParams` of a scoring request: the API's `logprobs`/`echo` on a sequence (prompt + answer) are
    vLLM's `prompt_logprobs` (the raw model's, as llama2ft's own scores); one greedy token is made and dropped."""
    return {"max_tokens": 1, "temperature": 0.0, "prompt_logprobs": top, "detokenize": False}


def scores_of(prompt_logprobs: list[Optional[dict[int, Any]]], ids: list[int], top: int) -> list[TokenScore]:
    """vLLM's prompt_logprobs (per position: None first, then {token id: Logprob} holding the `top` most likely
    and the token itself) as llama2ft's TokenScores."""
    out = [TokenScore(ids[0], None, [])]
    for token, found in zip(ids[1:], prompt_logprobs[1:]):
        ranked = sorted(((t, float(lp.logprob)) for t, lp in found.items()), key=lambda x: -x[1])
        out.append(TokenScore(token, float(found[token].logprob), ranked[:top] if top else []))
    return out


def token_prompt(ids: list[int]) -> dict[str, Any]:
    """A vLLM `TokensPrompt`: the rendered ids go in as they are (no second tokenization)."""
    return {"prompt_token_ids": list(ids)}


@dataclass
class VllmChatModel(ChatModel):
    """A ChatModel whose requests vLLM generates (`model` is a vLLM `LLMEngine`)."""

    lora: Any = None  # a LoRARequest, or None for a merged folder
    _waiting: int = field(default=0, repr=False)
    _new: list = field(default_factory=list, repr=False)
    _ids: Any = field(default_factory=itertools.count, repr=False)
    _wake: threading.Condition = field(default_factory=threading.Condition, repr=False)
    _closing: bool = field(default=False, repr=False)

    def enqueue(self, gen: Generation, own_place: bool = True) -> Future:
        job: Future = Future()
        with self._wake:
            if own_place and self.max_queue is not None and self._waiting >= self.max_queue:
                raise QueueFull(self._waiting, 1)
            if self._worker is None:
                self._worker = threading.Thread(target=self._serve_vllm, name=f"vllm-{self.name}", daemon=True)
                self._worker.start()
            self._waiting += 1
            self._new.append((gen, job))
            self._wake.notify()
        return job

    def generate_ids(self, *args: Any, **kwargs: Any) -> Any:  # the max_batch=1 path: never taken here
        raise UserError("engine=vllm generates through its own batching (max_batch > 1)")

    def score(self, rows: list[list[int]], top: int = 0) -> list[list[TokenScore]]:
        """Each row scored by vLLM (`score_args`): one request per row, run with the others."""
        gens = []
        for row in rows:
            gen = Generation(self, row, Sampling(do_sample=False, max_new_tokens=1), 1, 0)
            gen.score_top = top
            gen.start()
            gens.append(gen)
        for gen in gens:
            gen.run()
        return [scores_of(gen.prompt_logprobs, row, top) for gen, row in zip(gens, rows)]

    def close(self) -> None:
        with self._wake:
            self._closing = True
            self._wake.notify()
        if self._worker is not None:
            self._worker.join()
            self._worker = None

    def _serve_vllm(self) -> None:
        from vllm import SamplingParams

        running: dict[str, tuple[Generation, Future, int]] = {}  # request id -> (gen, job, tokens handed over)
        eos = self.tokenizer.eos_token_id
        while True:
            with self._wake:
                while not self._new and not running and not self._closing:
                    self._wake.wait()
                if self._closing and not self._new and not running:
                    return
                new, self._new = self._new, []
                self._waiting -= len(new)
            try:
                self._add(new, running, eos, SamplingParams)
                self._step(running)
            except Exception as exc:  # noqa: BLE001 - every running request gets the error, the thread lives
                for rid in list(running):
                    self._end(running.pop(rid), exc)

    def _add(self, new: list, running: dict, eos: int, params_class: Any) -> None:
        for gen, job in new:
            if not job.set_running_or_notify_cancel():
                continue
            try:
                gen.accept(None)  # raises when the request was cancelled meanwhile
            except RequestEnded as end:
                self._end((gen, job, 0), end)
                continue
            rid = str(next(self._ids))
            top = gen.score_top
            params = params_class(**(sampling_args(gen.sampling, gen.max_new_tokens, eos) if top is None else
                                     {**sampling_args(gen.sampling, 1, eos), **score_args(top)}))
            running[rid] = (gen, job, 0)
            try:
                self.model.add_request(rid, token_prompt(gen.prompt), params, lora_request=self.lora)
            except Exception as exc:  # noqa: BLE001 - this request fails alone (e.g. its prompt is too long)
                self._end(running.pop(rid), exc)

    def _step(self, running: dict) -> None:
        """Abort the cancelled requests, step vLLM once, hand each request its new tokens."""
        for rid, (gen, job, _) in list(running.items()):
            if gen.cancelled:
                self.model.abort_request([rid])
                self._end(running.pop(rid), None, cancelled=True)
        for out in self.model.step() if running else ():
            if out.request_id not in running:
                continue
            gen, job, handed = running[out.request_id]
            if getattr(out, "prompt_logprobs", None) is not None:
                gen.prompt_logprobs = out.prompt_logprobs
            ids = list(out.outputs[0].token_ids)
            try:
                for token in ids[handed:]:
                    gen.accept(token)
            except RequestEnded as end:
                self.model.abort_request([out.request_id])
                self._end(running.pop(out.request_id), end)
                continue
            running[out.request_id] = (gen, job, len(ids))
            if out.finished:
                self._end(running.pop(out.request_id), None)

    @staticmethod
    def _end(entry: tuple[Generation, Future, int], exc: Optional[BaseException], cancelled: bool = False) -> None:
        gen, job, _ = entry
        gen.finish(exc, cancelled)
        job.set_result(None)


def load_vllm_chat_model(r: Resolved, source: ModelSource, tokenizer: Any, template: Any, context_length: int,
                         max_batch: int) -> VllmChatModel:
    """Start vLLM on the resolved model (checks first that it can run here)."""
    require_vllm()
    from vllm import EngineArgs, LLMEngine
    from vllm.lora.request import LoRARequest

    engine = LLMEngine.from_engine_args(EngineArgs(**engine_args(r, source, max_batch)))
    lora = LoRARequest(**lora_request_args(r.adapter)) if r.adapter is not None else None
    return VllmChatModel(engine, tokenizer, template, context_length, r.label, max_batch=max_batch, lora=lora)
