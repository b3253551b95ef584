"""Answers sampled from the policy while it trains (GRPO's rollouts): `n` per prompt, each ending at EOS or
after `max_new_tokens`, through the generation core chat uses (`ChatModel.generate_ids`: left padding, the
same sampling keywords; `ChatModel.reply` turns ids into the answer text), or through vLLM on a CUDA GPU.

Each generation is seeded from the run's seed, the optimizer step and the process rank, inside a forked
random state: a resumed run samples what the uninterrupted run sampled at the same step, and the training
random state (dropout, data order) is left as it was.
"""
from __future__ import annotations

import importlib.util
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from llama2ft.core.errors import UserError
from llama2ft.data.templates import get_template
from llama2ft.inference.engine import ChatModel
from llama2ft.inference.sampling import Sampling
from llama2ft.model.loading import context_length

GENERATION = ("auto", "transformers", "vllm")


@dataclass
class Rollout:
    """N = prompts x n completions, grouped by prompt (a prompt's n answers are consecutive rows)."""

    prompt_ids: torch.Tensor  # (N, P) left-padded
    prompt_mask: torch.Tensor  # (N, P)
    completion_ids: torch.Tensor  # (N, C) right-padded
    completion_mask: torch.Tensor  # (N, C): 1 up to and including the first EOS
    texts: list[str]  # the answers as chat shows them
    truncated: torch.Tensor  # (N,) no EOS within max_new_tokens
    seconds: float  # wall time of the generation

    @property
    def tokens(self) -> int:
        return int(self.completion_mask.sum())

    def select(self, index: torch.Tensor) -> "Rollout":
        """These rows only (an index into N)."""
        rows = index.tolist()
        return Rollout(self.prompt_ids[index], self.prompt_mask[index], self.completion_ids[index],
                       self.completion_mask[index], [self.texts[i] for i in rows], self.truncated[index], self.seconds)

    def ids_list(self) -> list[list[int]]:
        """Each completion's ids (its EOS included), as TRL passes `completion_ids` to reward functions."""
        return [row[mask.bool()].tolist() for row, mask in zip(self.completion_ids, self.completion_mask)]


def _completion_tensors(rows: list[list[int]], eos: int, pad: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    width = max(1, max(len(r) for r in rows))
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    truncated = torch.zeros(len(rows), dtype=torch.bool)
    for i, row in enumerate(rows):
        end = row.index(eos) + 1 if eos in row else len(row)
        truncated[i] = eos not in row
        ids[i, :end] = torch.as_tensor(row[:end], dtype=torch.long)
        mask[i, :end] = 1
    return ids, mask, truncated


class TransformersRollouts:
    """Rollouts with the model being trained, through transformers' `generate` (CPU, or a GPU without vLLM)."""

    def __init__(self, model: Any, tokenizer: Any):
        # the template is not used: the prompts arrive as ids, rendered by the data step
        self.chat = ChatModel(model, tokenizer, get_template("human_assistant"), context_length(model), "grpo")

    def generate(self, model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor, n: int,
                 sampling: Sampling, seed: int) -> Rollout:
        started = time.perf_counter()
        prompts = [row[mask.bool()].tolist() for row, mask in zip(input_ids, attention_mask)]
        room = min(sampling.max_new_tokens, self.chat.context_length - input_ids.shape[1])
        self.chat.model = model  # the model as the Trainer wraps it now
        was_training = model.training
        with torch.random.fork_rng(devices=[input_ids.device] if input_ids.is_cuda else []):
            torch.manual_seed(seed)
            out = self.chat.generate_ids([p for p in prompts for _ in range(n)], sampling, room)
        model.train(was_training)
        return self._rollout(prompts, out, n, room, time.perf_counter() - started, input_ids, attention_mask)

    def _rollout(self, prompts: list[list[int]], out: list[list[int]], n: int, room: int, seconds: float,
                 input_ids: torch.Tensor, attention_mask: torch.Tensor) -> Rollout:
        tok = self.chat.tokenizer
        texts = [self.chat.reply(prompts[i // n], row, room, 0).text for i, row in enumerate(out)]
        ids, mask, truncated = _completion_tensors(out, tok.eos_token_id, tok.pad_token_id)
        return Rollout(input_ids.repeat_interleave(n, 0), attention_mask.repeat_interleave(n, 0), ids, mask, texts,
                       truncated, seconds)


class VllmRollouts(TransformersRollouts):
    """Rollouts by a vLLM engine on the same GPU: the adapter being trained is saved and handed to vLLM as a
    new LoRA request before each generation (vLLM cannot see the Trainer's weights otherwise). Needs LoRA
    without `modules_to_save` (vLLM's LoRA carries only the low-rank matrices). Not run on a GPU here."""

    def __init__(self, model: Any, tokenizer: Any, base: str, memory: float, rank: int):
        super().__init__(model, tokenizer)
        from vllm import LLM

        self.llm = LLM(model=base, tokenizer=tokenizer.name_or_path, enable_lora=True, max_lora_rank=rank,
                       gpu_memory_utilization=memory, seed=0)
        self.folder = Path(tempfile.mkdtemp(prefix="llama2ft-vllm-lora-"))
        self.version = 0

    def generate(self, model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor, n: int,
                 sampling: Sampling, seed: int) -> Rollout:
        from vllm import SamplingParams
        from vllm.lora.request import LoRARequest

        from llama2ft.inference.vllm_engine import sampling_args, token_prompt

        started = time.perf_counter()
        self.version += 1
        adapter = self.folder / f"v{self.version}"
        getattr(model, "module", model).save_pretrained(str(adapter))
        prompts = [row[mask.bool()].tolist() for row, mask in zip(input_ids, attention_mask)]
        room = min(sampling.max_new_tokens, self.chat.context_length - input_ids.shape[1])
        params = SamplingParams(n=n, **{**sampling_args(sampling, room, self.chat.tokenizer.eos_token_id),
                                        "seed": seed, "skip_special_tokens": False})
        results = self.llm.generate([token_prompt(p) for p in prompts], params,
                                    lora_request=LoRARequest(f"v{self.version}", self.version, str(adapter)),
                                    use_tqdm=False)
        out = [list(c.token_ids) for r in results for c in r.outputs]
        return self._rollout(prompts, out, n, room, time.perf_counter() - started, input_ids, attention_mask)


def generation_problems(generation: str, lora: Any, cuda: bool) -> list[str]:
    """Problems of method.generation for the run's LoRA settings and device."""
    if generation not in GENERATION:
        return [f"method.generation={generation!r}: must be one of {', '.join(GENERATION)}"]
    if generation != "vllm":
        return []
    p = []
    if importlib.util.find_spec("vllm") is None:
        p.append("method.generation=vllm needs the vllm package (pip install 'llama2ft[vllm]'); or use "
                 "method.generation=transformers")
    if not cuda:
        p.append("method.generation=vllm needs a CUDA GPU and none is visible; use method.generation=transformers")
    if not lora.enabled or lora.modules_to_save:
        p.append("method.generation=vllm needs a LoRA adapter without lora.modules_to_save (vLLM's LoRA has only "
                 "the low-rank matrices)")
    return p


def uses_vllm(generation: str, lora: Any, cuda: bool) -> bool:
    """`auto`: vLLM when it is installed, there is a CUDA GPU and the adapter fits it; else transformers."""
    if generation == "auto":
        return not generation_problems("vllm", lora, cuda)
    return generation == "vllm"


def make_rollouts(generation: str, model: Any, tokenizer: Any, lora: Any, base: str, cuda: bool,
                  memory: float = 0.3) -> TransformersRollouts:
    if uses_vllm(generation, lora, cuda):
        try:
            return VllmRollouts(model, tokenizer, base, memory, int(lora.r))
        except ImportError as exc:
            raise UserError(f"method.generation=vllm: vLLM could not be imported: {exc}") from None
    return TransformersRollouts(model, tokenizer)
