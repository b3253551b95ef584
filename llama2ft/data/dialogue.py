"""Parse and format dialogues in the community Llama-2 Chinese format.

A dialogue is a sequence of blocks ``<s>Human: QUESTION\\n</s><s>Assistant: ANSWER\\n</s>``
(``<s>`` and ``</s>`` are literal text). Pure stdlib; linear time in the cell length.
"""
from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from llama2ft.core.errors import DataError

HUMAN = "human"
ASSISTANT = "assistant"
_LABELS = {HUMAN: "Human", ASSISTANT: "Assistant"}
_OPEN, _CLOSE = "<s>", "</s>"
_HUMAN_HEAD, _ASSISTANT_HEAD = "<s>Human: ", "<s>Assistant: "
_EXPECTED = repr("<s>Human: QUESTION\n</s><s>Assistant: ANSWER\n</s>")
# A role label is a short word; anything longer before the first ':' is not meant as a role.
_MAX_ROLE_LEN = 20
_SPACE = re.compile(r"\s*")  # a single-character class: matching is linear, never backtracks


@dataclass(frozen=True)
class Turn:
    """One turn: ``role`` is "human" or "assistant"; ``text`` is the content without the
    single space after the colon and without the final newline before ``</s>``."""

    role: str
    text: str

    def __post_init__(self) -> None:
        if self.role not in _LABELS:
            raise ValueError(f"unknown role {self.role!r}; expected {HUMAN!r} or {ASSISTANT!r}")


class DialogueFormatError(ValueError):
    """The text is not a valid dialogue; the message says why (the caller adds file and row)."""


def parse_dialogue(text: str) -> list[Turn]:
    """Split a dialogue cell into turns.

    Tolerated: whitespace between/around blocks, a missing space after the colon, a missing
    ``\\n`` (or a ``\\r\\n``) before ``</s>``, role names in any case. Kept as is: consecutive
    turns of the same role and a final unanswered Human turn (the caller decides). Errors
    (DialogueFormatError): empty cell, no blocks, text outside blocks, unclosed or nested
    ``<s>``, unknown role, first turn not Human, no Assistant turn, empty Assistant turn.
    """
    canonical = _parse_canonical(text)
    return canonical if canonical is not None else _parse_full(text)


def _parse_full(text: str) -> list[Turn]:
    """`parse_dialogue` for any text: every tolerance, and the reason when the text is not a dialogue."""
    if not text.strip():
        raise DialogueFormatError("empty dialogue (the cell is empty or only whitespace)")
    if _OPEN not in text:
        raise DialogueFormatError(f"no <s>...</s> blocks found (the text starts with {_snippet(text)}); expected {_EXPECTED}")

    turns: list[Turn] = []
    pos = _skip_space(text, 0)
    while pos < len(text):
        number = len(turns) + 1
        if not text.startswith(_OPEN, pos):
            where = "before the first <s>" if not turns else f"after turn {len(turns)} (character {pos})"
            raise DialogueFormatError(
                f"unexpected text {where}: {_snippet(text[pos:])}; every turn must be inside <s>...</s>"
            )
        start = pos + len(_OPEN)
        end = text.find(_CLOSE, start)
        nested = text.find(_OPEN, start, len(text) if end == -1 else end)
        if nested != -1:
            raise DialogueFormatError(
                f"turn {number} (character {pos}) has another <s> inside it (character {nested}); "
                "is its </s> missing?"
            )
        if end == -1:
            raise DialogueFormatError(f"turn {number} (character {pos}) has no closing </s>")
        turns.append(_parse_block(text[start:end], number))
        pos = _skip_space(text, end + len(_CLOSE))

    if turns[0].role != HUMAN:
        raise DialogueFormatError("dialogue starts with an Assistant turn; the first turn must be Human")
    if not any(t.role == ASSISTANT for t in turns):
        raise DialogueFormatError("dialogue has no Assistant turn, so there is no answer to learn")
    return turns


def format_dialogue(turns: Iterable[Turn]) -> str:
    """Inverse of parse_dialogue: ``<s>Human: Q\\n</s><s>Assistant: A\\n</s>...``."""
    parts = []
    for turn in turns:
        if _OPEN in turn.text or _CLOSE in turn.text:
            # It could not be parsed back: the markers would be read as block boundaries.
            raise ValueError(f"turn text must not contain {_OPEN!r} or {_CLOSE!r}: {_snippet(turn.text)}")
        parts.append(f"{_OPEN}{_LABELS[turn.role]}: {turn.text}\n{_CLOSE}")
    return "".join(parts)


def parse_rows(
    rows: Iterable[tuple[int, str]], path: str, skip_bad_rows: bool
) -> tuple[list[tuple[int, list[Turn]]], list[tuple[int, str]]]:
    """Parse ``(row_number, cell)`` rows into ``(dialogues, skipped)``.

    A bad row (including an empty cell) raises ``DataError("{path} row {n}: {reason}")``,
    or with ``skip_bad_rows`` is left out and reported in ``skipped`` as ``(n, reason)``.
    """
    dialogues: list[tuple[int, list[Turn]]] = []
    skipped: list[tuple[int, str]] = []
    for n, cell in rows:
        try:
            dialogues.append((n, parse_dialogue(cell)))
        except DialogueFormatError as exc:
            if not skip_bad_rows:
                raise DataError(f"{path} row {n}: {exc}") from None
            skipped.append((n, str(exc)))
    return dialogues, skipped


# A cell written exactly as `format_dialogue` writes it, with the conditions `canonical_blocks` checks:
# text without <s> or </s>, "\n" (not "\r\n") before each </s>, a first Human turn, an Assistant turn
# and no blank answer. One C-speed match decides what the data step's check pass needs to know.
_TEXT = r"(?:[^<]|<(?!/?s>))*"
_HUMAN_BLOCK = rf"<s>Human: {_TEXT}(?<!\r)\n</s>"
_ANSWER_BLOCK = rf"<s>Assistant: \s*(?:[^\s<]|<(?!/?s>)){_TEXT}(?<!\r)\n</s>"
_CANONICAL = re.compile(rf"(?:{_HUMAN_BLOCK})+{_ANSWER_BLOCK}(?:{_HUMAN_BLOCK}|{_ANSWER_BLOCK})*")


def is_canonical(text: str) -> bool:
    """`canonical_blocks(text) is not None`, in one regular-expression match."""
    return _CANONICAL.fullmatch(text) is not None


def canonical_blocks(text: str) -> list[tuple[str, int, int]] | None:
    """(role, start, end) of each turn's text in a cell written exactly as `format_dialogue` writes it
    (the common case, checked at C speed, no Turn objects made), or None: then `parse_dialogue`'s full
    parser gives the same turns or says what is wrong."""
    pieces = text.split(_CLOSE)
    if pieces[-1] or len(pieces) < 3:
        return None
    blocks, pos, answered = [], 0, False
    for piece in pieces[:-1]:
        if piece.startswith(_HUMAN_HEAD):
            role, head = HUMAN, len(_HUMAN_HEAD)
        elif piece.startswith(_ASSISTANT_HEAD):
            role, head = ASSISTANT, len(_ASSISTANT_HEAD)
        else:
            return None
        if not piece.endswith("\n") or piece.endswith("\r\n") or piece.find(_OPEN, head) != -1:
            return None
        if role == ASSISTANT:
            if not piece[head:-1].strip():
                return None
            answered = True
        blocks.append((role, pos + head, pos + len(piece) - 1))
        pos += len(piece) + len(_CLOSE)
    return blocks if blocks[0][0] == HUMAN and answered else None


def _parse_canonical(text: str) -> list[Turn] | None:
    blocks = canonical_blocks(text)
    return None if blocks is None else [Turn(role, text[start:end]) for role, start, end in blocks]


def _parse_block(block: str, number: int) -> Turn:
    """``Role: content`` (the text between <s> and </s>) -> Turn."""
    colon = block.find(":", 0, _MAX_ROLE_LEN + 1)
    if colon == -1:
        raise DialogueFormatError(
            f"turn {number} starts with {_snippet(block)}; expected 'Human:' or 'Assistant:' right after <s>"
        )
    label = block[:colon]
    role = label.lower()
    if role not in _LABELS:
        raise DialogueFormatError(f"turn {number} has unknown role {label!r}; expected 'Human' or 'Assistant'")

    content = block[colon + 1 :]
    if content.startswith(" "):
        content = content[1:]
    if content.endswith("\r\n"):
        content = content[:-2]
    elif content.endswith("\n"):
        content = content[:-1]
    if role == ASSISTANT and not content.strip():
        raise DialogueFormatError(f"turn {number} is an Assistant turn with empty content")
    return Turn(role, content)


def _skip_space(text: str, pos: int) -> int:
    return _SPACE.match(text, pos).end()  # type: ignore[union-attr]  # \s* always matches


def _snippet(text: str, limit: int = 40) -> str:
    return repr(text[:limit] + ("..." if len(text) > limit else ""))
