"""The parts of an OpenAI answer beyond one streamed text: several prompts and `n` choices per request,
`echo`, and log-probabilities in OpenAI's two shapes.

Legacy completions (`logprobs: k`): `choices[i].logprobs = {tokens, token_logprobs, top_logprobs, text_offset}`,
one entry per token of the returned text (the prompt's too with `echo`; its first token has no log-prob and
`null` alternatives); `top_logprobs` maps the k most likely tokens, and always the token itself, to their
log-probs; `text_offset` is where each token starts, counted from the start of the prompt (as OpenAI does, with
or without echo). Chat (`logprobs: true, top_logprobs: k`): `choices[i].logprobs.content = [{token, logprob,
bytes, top_logprobs: [{token, logprob, bytes}]}]` for the tokens of the answer's text.

Log-probs are the model's own distribution (inference/logprobs.py), whatever the request's sampling settings;
the text of each token is what it adds to the text: a prompt given as text is cut into its tokens' parts of
that very text (`echo` returns it as sent), token-id prompts and answers are decoded (`row_pieces`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Union

from llama2ft.inference.engine import ChatModel
from llama2ft.inference.logprobs import Piece, TokenScore, alternative_piece, row_pieces, special_ids, token_pieces
from llama2ft.inference.request import Generation
from llama2ft.inference.sampling import Sampling, cut_at_stop
from llama2ft.serving.api_models import choice_sampling


@dataclass
class Choice:
    prompt: list[int]
    gen: Optional[Generation]  # None: max_tokens=0, the prompt is only scored
    text: Optional[str] = None  # the prompt as the request gave it, when it gave a text

    @property
    def row(self) -> list[int]:
        """The prompt and every token generated, EOS included (OpenAI and vLLM show it among the tokens)."""
        return self.prompt + (answer_ids(self.gen) if self.gen else [])


def answer_ids(gen: Generation) -> list[int]:
    return gen.token_ids + ([gen.chat.tokenizer.eos_token_id] if gen.ended_by_eos else [])


def generate_all(gens: list[Generation]) -> None:
    """Queue every generation first (they are answered together), then wait for each. The request takes one
    place in the queue however many choices it has: refused whole (503) or served whole, never a 503 that no
    retry can pass (n x prompts over max_queue) nor choices left generating for nobody."""
    for i, gen in enumerate(gens):
        gen.start(own_place=i == 0)
    for gen in gens:
        gen.run()


def completion_choices(chat: ChatModel, prompts: list[Union[str, list[int]]], samp: Sampling, n: int,
                       generate: bool) -> list[Choice]:
    """Every prompt's n choices (index = prompt * n + j, OpenAI's order), generated together; with
    `generate=False` (max_tokens=0 and echo) nothing is generated."""
    ids = [chat.raw_prompt_ids(p, room=1 if generate else 0) for p in prompts]
    choices = [Choice(p, chat.stream_raw(p, choice_sampling(samp, j)) if generate else None,
                      text if isinstance(text, str) else None)
               for p, text in zip(ids, prompts) for j in range(n)]
    generate_all([c.gen for c in choices if c.gen is not None])
    return choices


def completion_choice(chat: ChatModel, choice: Choice, index: int, echo: bool, stop: tuple[str, ...],
                      scores: Optional[list[TokenScore]], top: int) -> dict[str, Any]:
    """One choice of /v1/completions: its text (the prompt's before it with echo), cut before a stop text,
    and its legacy `logprobs` when scores are given."""
    row = choice.row
    n_prompt = len(choice.prompt)
    pieces = row_pieces(chat.tokenizer, row, n_prompt, choice.text)
    prompt_text = "".join(p.text for p in pieces[:n_prompt])
    answer = "".join(p.text for p in pieces[n_prompt:])
    cut = cut_at_stop(answer, stop, strip=False)
    answer = answer if cut is None else cut
    end = len(prompt_text) + len(answer)
    # every generated token (EOS too), but those of a stop text and after it
    shown = [*(range(n_prompt) if echo else ()),
             *(i for i in range(n_prompt, len(row)) if cut is None or pieces[i].offset < end)]
    logprobs = None if scores is None else legacy_logprobs(chat.tokenizer, row, pieces, scores, shown, top)
    finish = choice.gen.reply.finish_reason if choice.gen is not None else "length"
    return {"index": index, "text": prompt_text + answer if echo else answer, "logprobs": logprobs,
            "finish_reason": finish}


def legacy_logprobs(tokenizer: Any, row: list[int], pieces: list[Piece], scores: list[TokenScore],
                    shown: list[int], top: int) -> dict[str, list]:
    out: dict[str, list] = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
    special = special_ids(tokenizer)
    for i in shown:
        piece, score = pieces[i], scores[i]
        out["tokens"].append(piece.token)
        out["token_logprobs"].append(score.logprob)
        out["text_offset"].append(piece.offset)
        if score.logprob is None:
            out["top_logprobs"].append(None)
            continue
        alternatives = {alternative_piece(tokenizer, t, row[i - 1], special).token: lp for t, lp in score.top[:top]}
        alternatives[piece.token] = score.logprob  # OpenAI: the token itself is always there
        out["top_logprobs"].append(alternatives)
    return out


def chat_logprobs(tokenizer: Any, gen: Generation, scores: list[TokenScore], top: int) -> dict[str, Any]:
    """`choices[i].logprobs` of a chat answer: its tokens that make up the answer's text (the whitespace and
    stop text around it left out, as from the text), each with its log-prob, bytes and `top` alternatives."""
    row = gen.prompt + gen.token_ids
    pieces = token_pieces(tokenizer, row)
    n_prompt, text = len(gen.prompt), gen.reply.text
    answer = "".join(p.text for p in pieces[n_prompt:])
    start = sum(len(p.text) for p in pieces[:n_prompt]) + max(0, answer.find(text))
    end = start + len(text)
    content, special = [], special_ids(tokenizer)
    for i in range(n_prompt, len(row)):
        p, s = pieces[i], scores[i]
        if not (start <= p.offset < end or p.offset < start < p.offset + len(p.text)):
            continue
        content.append({"token": p.token, "logprob": s.logprob, "bytes": list(p.raw),
                        "top_logprobs": [_entry(alternative_piece(tokenizer, t, row[i - 1], special), lp)
                                         for t, lp in s.top[:top]]})
    return {"content": content, "refusal": None}


def _entry(piece: Piece, logprob: float) -> dict[str, Any]:
    return {"token": piece.token, "logprob": logprob, "bytes": list(piece.raw)}
