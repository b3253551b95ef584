"""Prompt templates: the single place where a conversation becomes token ids.

A template renders turns as one text in which the tokenizer's BOS/EOS strings stand for those tokens
(as the community's csv writes `<s>`/`</s>`), together with the character spans that are trained:
each answer with its closing text and EOS. The text is tokenized as a whole, exactly as the tokenizer
tokenizes it (`tok(text, add_special_tokens=False)`), so training sees the tokens the community's own
tokenization gives; labels come from the spans through the tokenizer's offsets. The prompt for an
answer renders the conversation up to where that answer's trained part begins, so chat, the API and
evaluation feed the model the training ids up to its first trained token.

Where an answer starts: after `Assistant:` (after `[/INST]` for llama2_inst). The space in between
belongs to the answer: the prompt ends at the colon and the model writes the space. Llama's tokenizer
gives that space its own `▁` before a Chinese character, a digit, CJK punctuation or an emoji, and
joins it with a Latin word (`▁Hello`); either way the prompt is the same and the tokens are the
tokenizer's own.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Protocol

from llama2ft.core.errors import UserError
from llama2ft.data.dialogue import ASSISTANT, HUMAN, Turn, canonical_blocks, parse_dialogue

IGNORE_INDEX = -100
TEMPLATE_NAMES = ("human_assistant", "llama2_inst", "chat_template")
# How every chat_template llama2ft writes (data/chat_formats.py) begins: in those, a first system message
# with empty content means no system prompt (without one, the run's own applies).
PUBLISHED_MARK = "{#- llama2ft"


class Tokenizer(Protocol):
    bos_token: str
    eos_token: str
    bos_token_id: int
    eos_token_id: int
    backend_tokenizer: Any


@dataclass(frozen=True)
class Rendered:
    text: str  # tokenized as a whole; BOS/EOS written as the tokenizer's own strings
    trained: tuple[tuple[int, int], ...]  # character spans [start, end) of what is learned


@dataclass
class Encoded:
    input_ids: list[int]
    labels: list[int]


class Template:
    """Renders turns as text; subclasses define the text around each turn."""

    name = ""
    spans_end_with_eos = True  # every trained span ends with the EOS token (the data step's fast path)

    def __init__(self, system: Optional[str] = None):
        self.system = system

    def render(self, turns: list[Turn], tok: Tokenizer) -> Rendered:
        """A whole conversation, answers marked as trained (a final unanswered question is kept, untrained)."""
        raise NotImplementedError

    def prompt(self, turns: list[Turn], tok: Tokenizer) -> str:
        """The text that asks for the answer to the last (human) turn of `turns`."""
        raise NotImplementedError

    def render_cell(self, cell: str, tok: Tokenizer, canonical: Optional[bool] = None) -> Rendered:
        """A community-format cell (already checked), rendered as `render(parse_dialogue(cell))`;
        `canonical`: whether the check found the cell written exactly as `format_dialogue` writes
        (None: not known)."""
        return self.render(parse_dialogue(cell), tok)


@dataclass(frozen=True)
class Layout:
    """The text a template puts around each part of a conversation: the one definition of its format.
    Its Python rendering (training, chat, API, eval) below and the templates a published model carries
    (data/chat_formats.py: transformers' Jinja `chat_template`, Ollama's TEMPLATE) are all made from it.
    `{bos}` and `{eos}` stand for the tokenizer's BOS/EOS strings."""

    question: tuple[str, str]  # before and after a human turn's text
    answer_head: str  # before an answer, not trained: a generation prompt ends with it
    answer: tuple[str, str]  # before and after an answer's text: trained, with the answer
    system: Optional[tuple[str, str]] = None  # around the system prompt, put before the first question
    strip: bool = False  # contents (the first question with its system prompt) stripped of surrounding space

    def resolved(self, bos: str, eos: str) -> "Layout":
        """The layout with the tokenizer's BOS/EOS strings in place of `{bos}`/`{eos}`."""
        def fill(text: str) -> str:
            return text.replace("{bos}", bos).replace("{eos}", eos)

        return Layout((fill(self.question[0]), fill(self.question[1])), fill(self.answer_head),
                      (fill(self.answer[0]), fill(self.answer[1])),
                      None if self.system is None else (fill(self.system[0]), fill(self.system[1])), self.strip)


class LayoutTemplate(Template):
    """A template whose text is its `layout` (human_assistant, llama2_inst)."""

    layout: Layout

    def render(self, turns: list[Turn], tok: Tokenizer) -> Rendered:
        lay = self.layout.resolved(tok.bos_token, tok.eos_token)
        text, spans, asked = "", [], False
        for turn in turns:
            if turn.role == HUMAN:
                content = turn.text
                if not asked and self.system and lay.system is not None:
                    content = f"{lay.system[0]}{self.system}{lay.system[1]}{content}"
                text += f"{lay.question[0]}{content.strip() if lay.strip else content}{lay.question[1]}"
                asked = True
            else:
                text += lay.answer_head
                start = len(text)
                text += f"{lay.answer[0]}{turn.text.strip() if lay.strip else turn.text}{lay.answer[1]}"
                spans.append((start, len(text)))
        return Rendered(text, tuple(spans))

    def prompt(self, turns: list[Turn], tok: Tokenizer) -> str:
        return self.render(turns, tok).text + self.layout.resolved(tok.bos_token, tok.eos_token).answer_head


class HumanAssistant(LayoutTemplate):
    """`<s>Human: Q\\n</s><s>Assistant: A\\n</s>`: the Llama2 Chinese community's format (no system prompt)."""

    name = "human_assistant"
    layout = Layout(question=("{bos}Human: ", "\n{eos}"), answer_head="{bos}Assistant:", answer=(" ", "\n{eos}"))

    def render_cell(self, cell: str, tok: Tokenizer, canonical: Optional[bool] = None) -> Rendered:
        # A cell written exactly as this template renders is its own rendering: only the answers'
        # spans are found, without building turns (most of the data step's Python time).
        if (tok.bos_token, tok.eos_token) != ("<s>", "</s>") or canonical is False:
            return super().render_cell(cell, tok)
        if canonical:
            return Rendered(cell, tuple(_answer_spans(cell)))
        blocks = canonical_blocks(cell)
        if blocks is None:
            return super().render_cell(cell, tok)
        return Rendered(cell, tuple((start - 1, end + 5) for role, start, end in blocks if role == ASSISTANT))


def _answer_spans(cell: str) -> list[tuple[int, int]]:
    """Spans of the answers of a canonical cell: from the space after `<s>Assistant:` to its `</s>`."""
    lay = HumanAssistant.layout.resolved("<s>", "</s>")
    spans, head, tail = [], lay.answer_head, lay.answer[1]
    start = cell.find(head)
    while start != -1:
        end = cell.find(tail, start) + len(tail)
        spans.append((start + len(head), end))
        start = cell.find(head, end)
    return spans


class Llama2Inst(LayoutTemplate):
    """Llama-2 chat's own format, as its chat template renders it (contents stripped):
    `<s>[INST] <<SYS>>\\n{system}\\n<</SYS>>\\n\\n{q} [/INST] {a} </s><s>[INST] {q2} [/INST]`."""

    name = "llama2_inst"
    layout = Layout(question=("{bos}[INST] ", " [/INST]"), answer_head="", answer=(" ", " {eos}"),
                    system=("<<SYS>>\n", "\n<</SYS>>\n\n"), strip=True)


class ChatTemplate(Template):
    """The tokenizer's own `chat_template` (`tokenizer.apply_chat_template`): training tokens and
    served tokens are the model's own by construction. An answer's span is what the template adds
    after the generation prompt, up to the end of that turn."""

    name = "chat_template"
    spans_end_with_eos = False  # a model's template may close a turn with more than EOS

    def _messages(self, turns: list[Turn], tok: Any) -> list[dict[str, str]]:
        system = [{"role": "system", "content": self.system}] if self.system else []
        if not system and is_published(tok.chat_template):  # it has a default system prompt: say none
            system = [{"role": "system", "content": ""}]
        return system + [{"role": "user" if t.role == HUMAN else "assistant", "content": t.text} for t in turns]

    def _apply(self, tok: Any, turns: list[Turn], generation_prompt: bool) -> str:
        if not getattr(tok, "chat_template", None):
            raise UserError("template=chat_template: this tokenizer has no chat_template "
                            "(use human_assistant or llama2_inst)")
        try:
            return tok.apply_chat_template(self._messages(turns, tok), tokenize=False,
                                           add_generation_prompt=generation_prompt)
        except Exception as exc:  # a jinja error raised by the model's template, e.g. roles out of order
            raise UserError(f"the tokenizer's chat_template failed: {exc}") from exc

    def render(self, turns: list[Turn], tok: Tokenizer) -> Rendered:
        text = self._apply(tok, turns, False)
        spans = []
        for k, turn in enumerate(turns):
            if turn.role != ASSISTANT:
                continue
            before, through = self._apply(tok, turns[:k], True), self._apply(tok, turns[:k + 1], False)
            if not (through.startswith(before) and text.startswith(through)):
                raise UserError("the tokenizer's chat_template does not render a conversation as an extension "
                                "of its beginning, so the answers cannot be located in it")
            spans.append((len(before), len(through)))
        return Rendered(text, tuple(spans))

    def prompt(self, turns: list[Turn], tok: Tokenizer) -> str:
        return self._apply(tok, turns, True)


def is_published(chat_template: Any) -> bool:
    """Whether a tokenizer's chat_template was written by llama2ft (its default one, for named ones)."""
    default = chat_template.get("default") if isinstance(chat_template, dict) else chat_template
    return isinstance(default, str) and default.startswith(PUBLISHED_MARK)


def get_template(name: str, system: Optional[str] = None) -> Template:
    templates = {t.name: t for t in (HumanAssistant, Llama2Inst, ChatTemplate)}
    if name not in templates:
        raise ValueError(f"unknown template {name!r}; choose one of {', '.join(TEMPLATE_NAMES)}")
    return templates[name](system)


# ---------------------------------------------------------------- text -> ids
def tokenize(tok: Tokenizer, texts: list[str]) -> list[Any]:
    """`tokenizers.Encoding`s of `texts`, batched in the fast tokenizer's own threads; the ids are
    those of `tok(text, add_special_tokens=False)`."""
    backend = getattr(tok, "backend_tokenizer", None)
    if backend is None:
        raise UserError(f"{type(tok).__name__} is not a fast (tokenizers) tokenizer; llama2ft needs its offsets")
    return backend.encode_batch(texts, add_special_tokens=False)


def token_ranges(encoding: Any, trained: tuple[tuple[int, int], ...]) -> list[tuple[int, int]]:
    """The token index ranges [a, b) that hold the trained character spans of one tokenized rendering."""
    ranges = []
    for start, end in trained:
        first, last = _token_at(encoding, start, 1), _token_at(encoding, end - 1, -1)
        if first is not None and last is not None and first <= last:
            ranges.append((first, last + 1))
    return ranges


def eos_ranges(ids: list[int], encoding: Any, trained: tuple[tuple[int, int], ...], eos: int) -> list[tuple[int, int]]:
    """`token_ranges` for spans that each end with the EOS token (human_assistant, llama2_inst): the end
    is found in the ids (C speed) instead of through the offsets."""
    ranges = []
    for start, _ in trained:
        first = _token_at(encoding, start, 1)
        if first is not None:
            ranges.append((first, ids.index(eos, first) + 1))
    return ranges


def labels_of(encoding: Any, ids: list[int], trained: tuple[tuple[int, int], ...],
              train_on_inputs: bool = False) -> list[int]:
    """Labels of one tokenized rendering (`ids`: its token ids): the ids of the tokens inside the
    trained spans, -100 elsewhere."""
    if train_on_inputs:
        return list(ids)
    labels = [IGNORE_INDEX] * len(ids)
    for a, b in token_ranges(encoding, trained):
        labels[a:b] = ids[a:b]
    return labels


def _token_at(encoding: Any, char: int, step: int) -> Optional[int]:
    """The token that holds character `char`; for a character no token holds (removed by the
    normalizer), the nearest token after it (step 1) or before it (step -1)."""
    token = encoding.char_to_token(char)
    if token is not None:
        return token
    offsets = encoding.offsets
    order = range(len(offsets)) if step > 0 else range(len(offsets) - 1, -1, -1)
    return next((i for i in order if (offsets[i][0] >= char if step > 0 else offsets[i][1] <= char + 1)), None)


def encode_rendered(tok: Tokenizer, rendered: list[Rendered], train_on_inputs: bool = False) -> list[Encoded]:
    out = []
    for r, enc in zip(rendered, tokenize(tok, [r.text for r in rendered])):
        ids = enc.ids  # a new list on every access: take it once
        out.append(Encoded(ids, labels_of(enc, ids, r.trained, train_on_inputs)))
    return out


def encode_dialogues(template: Template, tok: Tokenizer, dialogues: list[list[Turn]],
                     train_on_inputs: bool = False) -> list[Encoded]:
    """Token ids and labels of whole conversations (batched): only answers (and their closing text
    and EOS) are trained, unless `train_on_inputs`."""
    return encode_rendered(tok, [template.render(turns, tok) for turns in dialogues], train_on_inputs)


def encode_dialogue(template: Template, tok: Tokenizer, turns: list[Turn], train_on_inputs: bool = False) -> Encoded:
    return encode_dialogues(template, tok, [turns], train_on_inputs)[0]


def encode_prompt(template: Template, tok: Tokenizer, turns: list[Turn]) -> list[int]:
    """The ids fed to the model to answer the last (human) turn of `turns`."""
    if not turns or turns[-1].role != HUMAN:
        raise ValueError("the conversation to answer must end with a human turn")
    return list(tokenize(tok, [template.prompt(turns, tok)])[0].ids)


def render_raw(tok: Tokenizer, text: str) -> Rendered:
    """Plain text for continued pre-training: BOS + text + EOS, every token trained."""
    full = f"{tok.bos_token}{text}{tok.eos_token}"
    return Rendered(full, ((0, len(full)),))


def encode_raw(tok: Tokenizer, text: str) -> Encoded:
    return encode_rendered(tok, [render_raw(tok, text)])[0]


def decode_text(tok: Any, ids: list[int], labels: Optional[list[int]] = None,
                marks: tuple[str, str] = ("", "")) -> str:
    """The ids as text, each run of text between special tokens decoded on its own as the tokenizer
    encoded it (so Llama's prefix `▁` adds no space: a community row decodes to its csv cell). With
    `labels`, the trained parts are put between `marks`."""
    specials = set(tok.all_special_ids)
    labels = labels if labels is not None else [IGNORE_INDEX] * len(ids)
    out: list[str] = []
    start = 0
    for end in [*(i for i, t in enumerate(ids) if t in specials), len(ids)]:
        out.append(_decode_run(tok, ids[start:end], labels[start:end], marks))
        if end < len(ids):
            piece = tok.convert_ids_to_tokens(ids[end])
            out.append(f"{marks[0]}{piece}{marks[1]}" if labels[end] != IGNORE_INDEX else piece)
        start = end + 1
    return "".join(out).replace(f"{marks[1]}{marks[0]}", "") if marks[0] else "".join(out)


def _decode_run(tok: Any, ids: list[int], labels: list[int], marks: tuple[str, str]) -> str:
    """One run of text tokens, its trained tokens (a tail, or a middle part) between `marks`."""
    if not ids:
        return ""
    text = tok.decode(ids)
    trained = [i for i, lab in enumerate(labels) if lab != IGNORE_INDEX]
    if not trained or not marks[0]:
        return text
    first, last = trained[0], trained[-1] + 1
    head, body = tok.decode(ids[:first]), tok.decode(ids[:last])
    if not (text.startswith(body) and body.startswith(head)):  # a character split between tokens
        return f"{marks[0]}{text}{marks[1]}"
    return f"{head}{marks[0]}{body[len(head):]}{marks[1]}{text[len(body):]}"
