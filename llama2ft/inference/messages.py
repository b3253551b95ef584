"""Chat messages as the API and the web chat receive them -> the turns the templates render."""
from __future__ import annotations

from typing import Any

from llama2ft.core.errors import UserError
from llama2ft.data.dialogue import Turn


def message_text(content: Any) -> str:
    """A chat message's content as text: a string, or (OpenAI, Gradio) a list of typed parts of which
    the text parts count; images and files are not read."""
    if isinstance(content, str):
        return content
    if isinstance(content, dict):
        return str(content.get("text", "")) if content.get("type", "text") == "text" else ""
    if isinstance(content, (list, tuple)):
        return "".join(message_text(part) for part in content)
    return ""


def to_turns(messages: list[tuple[str, str]]) -> list[Turn]:
    """(role, text) pairs with roles user/human and assistant into turns; consecutive user messages
    are joined, because the template has no place for two human turns in a row."""
    turns: list[Turn] = []
    for role, text in messages:
        kind = {"user": "human", "human": "human", "assistant": "assistant"}.get(role)
        if kind is None:
            raise UserError(f"unknown message role {role!r}; use user, assistant or system")
        if turns and turns[-1].role == kind:
            turns[-1] = Turn(kind, f"{turns[-1].text}\n{text}")
        else:
            turns.append(Turn(kind, text))
    if turns and turns[0].role == "assistant":
        turns = turns[1:]  # a greeting the model never saw in training has no human turn to follow
    return turns
