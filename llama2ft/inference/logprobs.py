"""Log-probabilities of token sequences and the text each token stands for (the API's `logprobs` and `echo`).

Scores are those of the model's own distribution: log-softmax of its raw logits, before repetition or
OpenAI penalties, temperature, top-k and top-p (what vLLM returns by default), so a request's sampling
settings never change them. Each position's score is that of the token given the ones before it; the first
token of a sequence has none.

`token_pieces` says what text each token adds to the decoded text, decoding incrementally the way a reader
of the stream sees it: joined, the pieces are the decoded text. A token that ends inside a multi-byte
character (byte-fallback tokens: rare Chinese characters, emoji) adds nothing until the character is
complete; the token that completes it carries the whole character. Special tokens (`<s>`) add no text
(as `decode(..., skip_special_tokens=True)`), so the text of a prompt is the prompt itself.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any, Optional

import torch

MAX_TOP = 20  # most alternatives per token a request may ask for (vLLM's default bound; OpenAI allows 5)
_BYTE_TOKEN = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")
_WINDOW = 6  # tokens decoded before the new one: enough context for spaces and multi-byte characters


@dataclass
class TokenScore:
    token: int
    logprob: Optional[float]  # None for the first token of a sequence
    top: list[tuple[int, float]]  # the most likely tokens at this position, best first (empty when not asked)


@dataclass
class Piece:
    text: str  # what the token adds to the decoded text ("" while its character is incomplete, and for <s>)
    raw: bytes  # the token's own bytes (UTF-8 of its text; one byte for a byte-fallback token)
    offset: int  # where the token's text starts in the decoded text (characters)
    partial: bool = False  # it ends inside a multi-byte character
    special: Optional[str] = None  # a special token's name (`<s>`): it stands for no text

    @property
    def token(self) -> str:
        """The token as OpenAI shows it: its text, `bytes:\\xNN` for a part of a character, `<s>` for BOS."""
        if self.special is not None:
            return self.special
        return "bytes:" + "".join(f"\\x{b:02x}" for b in self.raw) if self.partial else self.text


@torch.no_grad()
def score_sequences(model: Any, rows: list[list[int]], top: int, pad_id: int, max_tokens: int = 4096
                    ) -> list[list[TokenScore]]:
    """Every token's log-probability in each row (and the `top` most likely tokens at each position);
    rows go through the model together, right-padded and masked, at most `max_tokens` tokens a pass."""
    model.eval()
    device = next(model.parameters()).device
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
    out: list[Optional[list[TokenScore]]] = [None] * len(rows)
    start = 0
    while start < len(order):
        end = start + 1
        while end < len(order) and (end + 1 - start) * len(rows[order[end]]) <= max_tokens:
            end += 1
        batch = [rows[i] for i in order[start:end]]
        for i, scores in zip(order[start:end], _score_batch(model, batch, top, pad_id, device)):
            out[i] = scores
        start = end
    return out  # type: ignore[return-value]


def _score_batch(model: Any, rows: list[list[int]], top: int, pad_id: int, device: Any) -> list[list[TokenScore]]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.as_tensor(r)
        mask[i, : len(r)] = 1
    logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
    result = []
    for i, r in enumerate(rows):
        logp = torch.log_softmax(logits[i, : len(r) - 1].float(), dim=-1)  # position p predicts token p + 1
        chosen = logp.gather(1, ids[i, 1: len(r)].unsqueeze(1).to(logp.device)).squeeze(1).tolist()
        if top:
            values, indices = logp.topk(min(top, logp.shape[-1]), dim=-1)
            tops = [list(zip(ix, vs)) for ix, vs in zip(indices.tolist(), values.tolist())]
        else:
            tops = [[] for _ in chosen]
        result.append([TokenScore(r[0], None, []), *(TokenScore(t, lp, tp) for t, lp, tp in zip(r[1:], chosen, tops))])
    return result


def special_ids(tokenizer: Any) -> frozenset[int]:
    return frozenset(tokenizer.all_special_ids)


def token_pieces(tokenizer: Any, ids: list[int], start_offset: int = 0) -> list[Piece]:
    """The text each token adds (see the module docstring); offsets count from `start_offset`."""
    special = special_ids(tokenizer)
    pieces: list[Piece] = []
    offset, done = start_offset, 0  # ids[:done] have their text in the pieces
    for i, token in enumerate(ids):
        if token in special:
            name = tokenizer.convert_ids_to_tokens(token)
            pieces.append(Piece("", name.encode("utf-8"), offset, special=name))
            continue
        anchor = _anchor(ids, done, special)
        before = tokenizer.decode(ids[anchor:done], skip_special_tokens=True)
        now = tokenizer.decode(ids[anchor:i + 1], skip_special_tokens=True)
        raw = token_bytes(tokenizer, token)
        if now.endswith("\ufffd") and raw is not None and len(raw) == 1 and raw[0] >= 0x80:
            pieces.append(Piece("", raw, offset, True))  # the rest of the character is still to come
            continue
        text = now[len(os.path.commonprefix([before, now])):]
        pieces.append(Piece(text, raw if raw is not None and len(raw) == 1 else text.encode("utf-8"), offset, False))
        offset, done = offset + len(text), i + 1
    return pieces


def row_pieces(tokenizer: Any, row: list[int], n_prompt: int, prompt: Optional[str] = None) -> list[Piece]:
    """The pieces of a prompt and its answer. A prompt given as text is cut where its own tokens start in
    it (the tokenizer's offsets), so its pieces join to exactly that text, `<s>` and markup included (a BOS
    put before it adds nothing); token-id prompts and answers are decoded (`token_pieces`)."""
    decoded = token_pieces(tokenizer, row)
    head = _text_pieces(tokenizer, prompt, row[:n_prompt]) if prompt is not None else None
    if head is None:
        return decoded
    shift = sum(len(p.text) for p in head) - sum(len(p.text) for p in decoded[:n_prompt])
    return head + [Piece(p.text, p.raw, p.offset + shift, p.partial, p.special) for p in decoded[n_prompt:]]


def _text_pieces(tokenizer: Any, text: str, ids: list[int]) -> Optional[list[Piece]]:
    try:
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    except (NotImplementedError, ValueError):  # a slow tokenizer has no offsets
        return None
    own = list(enc["input_ids"])
    added = len(ids) - len(own)
    if added not in (0, 1) or ids[added:] != own:
        return None
    special = special_ids(tokenizer)
    starts = [0] * len(own)
    for i, (start, _) in enumerate(enc["offset_mapping"]):
        starts[i] = 0 if i == 0 else max(start, starts[i - 1])
    pieces = [Piece("", tokenizer.convert_ids_to_tokens(ids[0]).encode("utf-8"), 0,
                    special=tokenizer.convert_ids_to_tokens(ids[0]))] if added else []
    for i, token in enumerate(own):
        piece = text[starts[i]: starts[i + 1] if i + 1 < len(own) else len(text)]
        raw = token_bytes(tokenizer, token)
        name = tokenizer.convert_ids_to_tokens(token) if token in special else None
        partial = piece == "" and raw is not None and raw[0] >= 0x80
        pieces.append(Piece(piece, raw if raw is not None else piece.encode("utf-8"), starts[i], partial, name))
    return pieces


def _anchor(ids: list[int], done: int, special: frozenset[int]) -> int:
    """Where to start decoding: a few finished tokens back, at an ordinary token (a decode drops the leading
    space of its first token and skips special ones: starting on a finished ordinary token, both decodes
    lose the same, so their difference is exact)."""
    if done == 0:
        return 0
    anchor = max(0, done - _WINDOW)
    while anchor > 0 and (ids[anchor] in special or anchor >= done):
        anchor -= 1
    return anchor


def token_bytes(tokenizer: Any, token: int) -> Optional[bytes]:
    """A byte-fallback token's byte (`<0xE4>`); None for other tokens (their bytes are their text's)."""
    piece = tokenizer.convert_ids_to_tokens(token)
    m = _BYTE_TOKEN.match(piece or "")
    return bytes([int(m.group(1), 16)]) if m else None


def alternative_piece(tokenizer: Any, token: int, before: Optional[int], special: frozenset[int] = frozenset()
                      ) -> Piece:
    """How an alternative token (one of the `top`) would read after the token `before`; `special`: the
    tokenizer's special ids (`special_ids`)."""
    raw = token_bytes(tokenizer, token)
    if raw is not None and raw[0] >= 0x80:
        return Piece("", raw, 0, True)
    if token in special:
        name = tokenizer.convert_ids_to_tokens(token)
        return Piece("", name.encode("utf-8"), 0, special=name)
    context = [] if before is None or before in special else [before]
    both, alone = tokenizer.decode([*context, token]), tokenizer.decode(context)
    text = both[len(os.path.commonprefix([alone, both])):]
    return Piece(text, text.encode("utf-8"), 0, False)
