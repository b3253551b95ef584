"""Prompt templates: the single place where a conversation becomes token ids.

Training, chat, the API and evaluation all call `encode_dialogue` / `encode_prompt`, so the tokens a
model sees at inference are, by construction, the training tokens up to the start of the answer.
Text pieces are encoded without the tokenizer's own special tokens; BOS and EOS are added here
exactly once per turn (the community's script added a second BOS in front of the literal `<s>`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Protocol

from llama2ft.data.dialogue import Turn

IGNORE_INDEX = -100
TEMPLATE_NAMES = ("human_assistant", "llama2_inst")


class Tokenizer(Protocol):
    bos_token_id: int
    eos_token_id: int

    def __call__(self, text: str, add_special_tokens: bool = ...) -> dict: ...


@dataclass
class Encoded:
    input_ids: list[int]
    labels: list[int]


def _enc(tokenizer: Tokenizer, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


class Template:
    """Renders turns as token segments; subclasses define the text around each turn."""

    name = ""

    def __init__(self, system: Optional[str] = None):
        self.system = system

    def human_ids(self, tok: Tokenizer, text: str, index: int) -> list[int]:
        raise NotImplementedError

    def answer_prefix(self, tok: Tokenizer) -> list[int]:
        """Tokens between the human turn and the answer (the prompt ends with these)."""
        raise NotImplementedError

    def answer_ids(self, tok: Tokenizer, text: str) -> list[int]:
        """The trained tokens of an answer, closing EOS included."""
        raise NotImplementedError


class HumanAssistant(Template):
    """`<s>Human: Q\\n</s><s>Assistant: A\\n</s>`: the Llama2 Chinese community's format."""

    name = "human_assistant"

    def human_ids(self, tok: Tokenizer, text: str, index: int) -> list[int]:
        return [tok.bos_token_id, *_enc(tok, f"Human: {text}\n"), tok.eos_token_id]

    def answer_prefix(self, tok: Tokenizer) -> list[int]:
        return [tok.bos_token_id, *_enc(tok, "Assistant: ")]

    def answer_ids(self, tok: Tokenizer, text: str) -> list[int]:
        return [*_enc(tok, f"{text}\n"), tok.eos_token_id]


class Llama2Inst(Template):
    """Llama-2 chat: `<s>[INST] <<SYS>>\\n{system}\\n<</SYS>>\\n\\n{q} [/INST] {a} </s>`."""

    name = "llama2_inst"

    def human_ids(self, tok: Tokenizer, text: str, index: int) -> list[int]:
        if index == 0 and self.system:
            text = f"<<SYS>>\n{self.system}\n<</SYS>>\n\n{text}"
        return [tok.bos_token_id, *_enc(tok, f"[INST] {text} [/INST]")]

    def answer_prefix(self, tok: Tokenizer) -> list[int]:
        return []

    def answer_ids(self, tok: Tokenizer, text: str) -> list[int]:
        return [*_enc(tok, f" {text} "), tok.eos_token_id]


def get_template(name: str, system: Optional[str] = None) -> Template:
    if name == "human_assistant":
        return HumanAssistant(system)
    if name == "llama2_inst":
        return Llama2Inst(system)
    raise ValueError(f"unknown template {name!r}; choose one of {', '.join(TEMPLATE_NAMES)}")


def encode_dialogue(template: Template, tok: Tokenizer, turns: list[Turn], train_on_inputs: bool = False) -> Encoded:
    """Token ids and labels of a whole conversation: only answers (and their EOS) are trained,
    unless `train_on_inputs`. A human turn that was never answered is kept but not trained."""
    ids: list[int] = []
    labels: list[int] = []
    human_index = 0
    for turn in turns:
        if turn.role == "human":
            piece = template.human_ids(tok, turn.text, human_index)
            human_index += 1
            ids += piece
            labels += piece if train_on_inputs else [IGNORE_INDEX] * len(piece)
        else:
            prefix = template.answer_prefix(tok)
            answer = template.answer_ids(tok, turn.text)
            ids += prefix + answer
            labels += (prefix if train_on_inputs else [IGNORE_INDEX] * len(prefix)) + answer
    return Encoded(ids, labels)


def encode_prompt(template: Template, tok: Tokenizer, turns: list[Turn]) -> list[int]:
    """The ids fed to the model to answer the last (human) turn of `turns`."""
    if not turns or turns[-1].role != "human":
        raise ValueError("the conversation to answer must end with a human turn")
    return encode_dialogue(template, tok, turns).input_ids + template.answer_prefix(tok)


def encode_raw(tok: Tokenizer, text: str) -> Encoded:
    """Plain text for continued pre-training: BOS + text + EOS, every token trained."""
    ids = [tok.bos_token_id, *_enc(tok, text), tok.eos_token_id]
    return Encoded(ids, list(ids))
