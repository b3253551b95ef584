"""Choosing one request's next token from its logits, with its own sampling settings and random generator.

The steps and their order are those of transformers' `generate` (repetition penalty, OpenAI's frequency and
presence penalties (`OpenAIPenalties`, the logits processor `generate` gets), suppressed tokens, then
temperature, top-k, top-p and a multinomial draw; argmax when greedy), so that a request answered in a
batch gets the token it would get from `generate` alone. Each row is processed on its own: the
penalty only sees the row's own ids (never the padding of a batch), and the draw uses the request's
generator, so a seeded request samples the same answer whichever requests share its batch.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch

from llama2ft.inference.sampling import Sampling, seed_bits


def generator_for(sampling: Sampling) -> Optional[torch.Generator]:
    """The request's own random generator (seeded when it gives a seed); None when greedy."""
    if sampling.greedy:
        return None
    gen = torch.Generator()
    if sampling.seed is not None:
        gen.manual_seed(seed_bits(sampling.seed))
    else:
        gen.seed()
    return gen


def scores(logits: torch.Tensor, seen: torch.Tensor, sampling: Sampling, suppress: Sequence[int] = (),
           prompt_len: int = 0) -> torch.Tensor:
    """One row of float32 logits [vocab] -> the [1, vocab] scores a token is chosen from; `seen` holds the
    prompt (its first `prompt_len` ids) and the answer so far."""
    out = logits.unsqueeze(0).clone()
    if sampling.repetition_penalty != 1.0:
        ids = seen.unsqueeze(0)
        picked = torch.gather(out, 1, ids)
        picked = torch.where(picked < 0, picked * sampling.repetition_penalty, picked / sampling.repetition_penalty)
        out.scatter_(1, ids, picked)
    if sampling.openai_penalties:
        out = openai_penalties(out, seen[prompt_len:].unsqueeze(0), sampling)
    if suppress:
        out[0, list(suppress)] = -float("inf")
    if sampling.greedy:
        return out
    if sampling.temperature != 1.0:
        out = out / sampling.temperature
    if sampling.top_k:
        k = min(sampling.top_k, out.size(-1))
        out = out.masked_fill(out < torch.topk(out, k)[0][..., -1, None], -float("inf"))
    if sampling.top_p < 1.0:
        ordered, order = torch.sort(out, descending=False)
        drop = ordered.softmax(dim=-1).cumsum(dim=-1) <= (1 - sampling.top_p)
        drop[..., -1:] = False  # keep at least one token
        out = out.masked_fill(drop.scatter(1, order, drop), -float("inf"))
    return out


def openai_penalties(scores: torch.Tensor, answers: torch.Tensor, sampling: Sampling) -> torch.Tensor:
    """OpenAI's penalties on [rows, vocab] scores, given each row's answer so far [rows, length]: a token's
    logit minus frequency_penalty times its count in the answer, minus presence_penalty if it is there."""
    counts = torch.zeros_like(scores)
    counts.scatter_add_(1, answers.to(scores.device), torch.ones_like(answers, dtype=scores.dtype, device=scores.device))
    return scores - sampling.frequency_penalty * counts - sampling.presence_penalty * (counts > 0).to(scores.dtype)


class OpenAIPenalties:
    """`openai_penalties` as a transformers logits processor for `generate` on a left-padded batch whose
    prompts all end at column `prompt_width` (transformers applies custom processors after its repetition
    penalty and before temperature, top-k and top-p: the order `scores` follows)."""

    def __init__(self, sampling: Sampling, prompt_width: int):
        self.sampling, self.prompt_width = sampling, prompt_width

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        return openai_penalties(scores, input_ids[:, self.prompt_width:], self.sampling)


def next_token(logits: torch.Tensor, seen: torch.Tensor, sampling: Sampling, generator: Optional[torch.Generator],
               suppress: Sequence[int] = (), prompt_len: int = 0) -> int:
    """The next token id: argmax when greedy, else a draw from the request's own generator."""
    s = scores(logits, seen, sampling, suppress, prompt_len)
    if sampling.greedy:
        return int(torch.argmax(s, dim=-1))
    top = torch.isposinf(s)
    if top.any():  # an extreme penalty overflowed some scores: these dominate, and softmax would give NaN
        s = torch.where(top, 0.0, -float("inf"))
    return int(torch.multinomial(torch.softmax(s, dim=-1), num_samples=1, generator=generator))
