"""The shapes a dialogue row comes in (ShareGPT, OpenAI chat, Alpaca, the community format's text),
detected from a row's fields or forced with data.format, turned into the turns the templates render.

A row's system message becomes its `Dialogue.system`, the template's system prompt for that row.
Every problem is a `DialogueFormatError` that says what is wrong in the row (the caller adds the file
and line), e.g. an unknown role, roles out of order or an empty answer.
"""
from __future__ import annotations

from typing import Any, Optional

from llama2ft.data.dialogue import ASSISTANT, HUMAN, DialogueFormatError, Turn

# data.format: `dialogue` detects the shape of each row; the others force one (`raw`: plain text)
SHAPES = ("sharegpt", "openai", "alpaca", "community")
FORMATS = ("dialogue", *SHAPES, "raw")
_SYSTEM = "system"
# role names of ShareGPT (from) and OpenAI chat (role) files
_ROLES = {"human": HUMAN, "user": HUMAN, "gpt": ASSISTANT, "assistant": ASSISTANT, "chatgpt": ASSISTANT,
          "system": _SYSTEM}
_RESERVED = ("<s>", "</s>")  # the community format's block markers (the tokenizer's BOS/EOS strings)


class Dialogue(list):
    """A row's turns (a `list[Turn]`, so everything that takes turns takes it) and its system prompt."""

    def __init__(self, turns: list[Turn], system: Optional[str] = None):
        super().__init__(turns)
        self.system = system


def detect_shape(fields: dict[str, Any], text_column: str = "text") -> Optional[str]:
    """The shape a row's fields say it has (one of SHAPES), or None."""
    if "conversations" in fields:
        return "sharegpt"
    if "messages" in fields:
        return "openai"
    if "instruction" in fields and "output" in fields:
        return "alpaca"
    if text_column in fields:
        return "community"
    return None


def shape_problem(fields: dict[str, Any], text_column: str = "text") -> str:
    found = ", ".join(repr(k) for k in list(fields)[:8]) or "none"
    return (f"an object with none of the known shapes (fields: {found}); expected 'conversations' (ShareGPT), "
            f"'messages' (OpenAI chat), 'instruction' and 'output' (Alpaca) or {text_column!r} (community "
            "format); data.format=... forces one")


def to_dialogue(fields: dict[str, Any], shape: str) -> Dialogue:
    """The turns of a ShareGPT, OpenAI-chat or Alpaca row (`community` rows are cells: see `parse_dialogue`)."""
    if shape == "alpaca":
        return _alpaca(fields)
    key, role_key, text_key = ("conversations", "from", "value") if shape == "sharegpt" else ("messages", "role",
                                                                                               "content")
    if key not in fields:
        raise DialogueFormatError(f"no {key!r} field (data.format={shape})")
    messages = fields[key]
    if not isinstance(messages, list) or not messages:
        raise DialogueFormatError(f"{key!r} must be a non-empty list of {{{role_key!r}, {text_key!r}}} objects")
    system, turns = None, []
    for i, message in enumerate(messages):
        where = f"{key}[{i}]"
        if not isinstance(message, dict) or role_key not in message:
            raise DialogueFormatError(f"{where} is not an object with {role_key!r} and {text_key!r}")
        role = _ROLES.get(str(message[role_key]).strip().lower())
        if role is None:
            expected = "human, gpt or system" if shape == "sharegpt" else "system, user or assistant"
            raise DialogueFormatError(f"{where} has unknown role {message[role_key]!r}; expected {expected}")
        text = _text(message.get(text_key), where)
        if role == _SYSTEM:
            if turns or system is not None:
                raise DialogueFormatError(f"roles out of order: {where} is a system message after the first message")
            system = text
        else:
            turns.append(_turn(role, text, where, turns))
    return _finish(turns, system)


def _alpaca(fields: dict[str, Any]) -> Dialogue:
    for key in ("instruction", "output"):
        if key not in fields:
            raise DialogueFormatError(f"no {key!r} field (data.format=alpaca)")
    turns: list[Turn] = []
    history = fields.get("history") or []
    if not isinstance(history, list):
        raise DialogueFormatError("'history' must be a list of [question, answer] pairs")
    for i, pair in enumerate(history):
        if not isinstance(pair, (list, tuple)) or len(pair) != 2:
            raise DialogueFormatError(f"history[{i}] must be a [question, answer] pair")
        turns.append(_turn(HUMAN, _text(pair[0], f"history[{i}][0]"), f"history[{i}][0]", turns))
        turns.append(_turn(ASSISTANT, _text(pair[1], f"history[{i}][1]"), f"history[{i}][1]", turns))
    question = _text(fields["instruction"], "'instruction'")
    extra = _text(fields.get("input"), "'input'")
    if extra.strip():  # the Alpaca convention: the input follows the instruction on its own line
        question = f"{question}\n{extra}" if question.strip() else extra
    turns.append(_turn(HUMAN, question, "'instruction'", turns))
    turns.append(_turn(ASSISTANT, _text(fields["output"], "'output'"), "'output'", turns))
    system = _text(fields.get("system"), "'system'")
    return _finish(turns, system or None)


def _text(value: Any, where: str) -> str:
    """A message's text: a string, null (empty), or OpenAI's list of content parts of type text."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(p, dict) for p in value):
        kinds = [p.get("type", "text") for p in value]
        if any(k != "text" for k in kinds):
            raise DialogueFormatError(f"{where} has a content part of type {next(k for k in kinds if k != 'text')!r};"
                                      " only text can be trained")
        return "".join(str(p.get("text", "")) for p in value)
    raise DialogueFormatError(f"{where} must be text, found {type(value).__name__}")


def _turn(role: str, text: str, where: str, before: list[Turn]) -> Turn:
    previous = before[-1].role if before else None
    if previous == role or (previous is None and role == ASSISTANT):
        said = "an answer" if role == ASSISTANT else "a question"
        after = "at the start" if previous is None else "right after another"
        raise DialogueFormatError(f"roles out of order: {where} is {said} {after}; questions and answers must "
                                  "alternate, starting with a question")
    if role == ASSISTANT and not text.strip():
        raise DialogueFormatError(f"empty answer in {where}")
    for marker in _RESERVED:
        if marker in text:
            raise DialogueFormatError(f"{where} contains {marker!r}, which marks turn boundaries (the tokenizer's "
                                      "BOS/EOS); remove it from the text")
    return Turn(role, text)


def _finish(turns: list[Turn], system: Optional[str]) -> Dialogue:
    if not any(t.role == ASSISTANT for t in turns):
        raise DialogueFormatError("no answer (assistant/gpt message), so there is nothing to learn")
    return Dialogue(turns, system)
