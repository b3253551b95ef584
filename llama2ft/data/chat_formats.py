"""The training template in the forms other runtimes read, made from its one definition in
`data/templates.py` (a `Layout`): a Jinja `chat_template` (transformers' `apply_chat_template`, vLLM,
TGI, llama.cpp and llama-cpp-python from a GGUF) and an Ollama TEMPLATE (Go template syntax).

Conventions of every template llama2ft writes (they mark themselves with `MARK`): a first message with
role `system` sets the system prompt, one with empty content means no system prompt, and without one the
run's own system prompt (if any) applies, as in `llama2ft-chat`; roles must alternate user/assistant.
A template of the tokenizer's own (`template=chat_template`) is kept as written; a run's system prompt
is put in front of it as a default (`system_preamble`).
"""
from __future__ import annotations

import ast
import re
from typing import Any, Optional

from llama2ft.data.dialogue import Turn
from llama2ft.core.errors import UserError
from llama2ft.data.templates import PUBLISHED_MARK, ChatTemplate, Layout, LayoutTemplate, Template

MARK = PUBLISHED_MARK[len("{#- "):]  # in the first comment of every template llama2ft writes
ORIGINAL = "original"  # the name under which a tokenizer's own, different chat_template is kept
ALTERNATE = "Conversation roles must alternate user/assistant/user/assistant/..."
_PREAMBLE_END = "{#- /" + MARK + " system -#}"
_PREAMBLE = re.compile(r"^\{#- " + MARK + r" system.*?" + re.escape(_PREAMBLE_END), re.S)


def jinja_string(text: str) -> str:
    """`text` as a Jinja string literal (also read alike by minijinja and llama.cpp's minja)."""
    escaped = text.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n").replace("\r", "\\r")
    return "'" + escaped.replace("\t", "\\t") + "'"


def jinja_expr(*pieces: str) -> str:
    """Layout pieces (`{bos}`/`{eos}` standing for the tokens) as one Jinja expression; names of
    variables (`content`, ...) are passed as `=name`."""
    parts = []
    for piece in pieces:
        if piece.startswith("="):
            parts.append(piece[1:])
            continue
        for bit in re.split(r"(\{bos\}|\{eos\})", piece):
            if bit:
                parts.append({"{bos}": "bos_token", "{eos}": "eos_token"}.get(bit) or jinja_string(bit))
    return " + ".join(parts) or "''"


def jinja_template(template: LayoutTemplate) -> str:
    """The Jinja chat_template of a layout template, with its system prompt as the default."""
    lay: Layout = template.layout
    trim = " | trim" if lay.strip else ""
    default = jinja_string(template.system) if template.system and lay.system else "''"
    about = ("A first system message sets the system prompt (empty: none)" if lay.system is not None else
             "It has no system prompt (a system message is left out)")
    lines = [
        "{#- " + MARK + f" template {template.name} (llama2ft/data/templates.py). {about}; roles alternate "
        "user/assistant. -#}",
        "{%- if messages and messages[0]['role'] == 'system' -%}",
        "{%- set system_message = messages[0]['content'] -%}{%- set loop_messages = messages[1:] -%}",
        "{%- else -%}",
        "{%- set system_message = " + default + " -%}{%- set loop_messages = messages -%}",
        "{%- endif -%}",
        "{%- for message in loop_messages -%}",
        "{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}",
        "{{- raise_exception(" + jinja_string(ALTERNATE) + ") -}}",
        "{%- endif -%}",
        "{%- if message['role'] == 'user' -%}",
        "{%- set content = message['content'] -%}",
    ]
    if lay.system is not None:
        lines.append("{%- if loop.first and system_message -%}{%- set content = "
                     + jinja_expr(lay.system[0], "=system_message", lay.system[1], "=content") + " -%}{%- endif -%}")
    lines += [
        "{{- " + jinja_expr(lay.question[0], f"=(content{trim})", lay.question[1]) + " -}}",
        "{%- else -%}",
        "{{- " + jinja_expr(lay.answer_head, lay.answer[0], f"=(message['content']{trim})", lay.answer[1]) + " -}}",
        "{%- endif -%}",
        "{%- endfor -%}",
    ]
    if lay.answer_head:
        lines.append("{%- if add_generation_prompt -%}{{- " + jinja_expr(lay.answer_head) + " -}}{%- endif -%}")
    return "\n".join(lines)


_HEAD = re.compile(r"^\{#- " + re.escape(MARK) + r" template (\w+) ")
_DEFAULT_SYSTEM = re.compile(r"\{%- set system_message = ('(?:[^'\\]|\\.)*') -%\}")


def template_of(chat_template: Any) -> Optional[tuple[str, Optional[str]]]:
    """(template name, system prompt) of a chat_template that `jinja_template` wrote (the default one of
    a dict); None for any other, a tokenizer's own template included."""
    text = chat_template.get("default") if isinstance(chat_template, dict) else chat_template
    head = _HEAD.match(text) if isinstance(text, str) else None
    if head is None:
        return None
    default = _DEFAULT_SYSTEM.search(text)
    system = ast.literal_eval(default.group(1)) if default else ""  # jinja_string writes a Python literal
    return head.group(1), system or None


def system_preamble(own: str, system: Optional[str]) -> str:
    """A tokenizer's own template with `system` as the default system prompt (`own` unchanged without
    one); a preamble an earlier llama2ft run put in front is replaced, not stacked."""
    own = _PREAMBLE.sub("", own, count=1)
    if not system:
        return own
    return "\n".join([
        "{#- " + MARK + " system: without a first system message the run's system prompt applies; an empty one "
        "means none. -#}",
        "{%- if messages and messages[0]['role'] == 'system' -%}",
        "{%- if not messages[0]['content'] -%}{%- set messages = messages[1:] -%}{%- endif -%}",
        "{%- else -%}",
        "{%- set messages = [{'role': 'system', 'content': " + jinja_string(system) + "}] + messages -%}",
        "{%- endif -%}",
        _PREAMBLE_END,
    ]) + own


def published_template(template: Template, tok: Any) -> str:
    """The chat_template that a model trained with `template` is published with."""
    if isinstance(template, LayoutTemplate):
        return jinja_template(template)
    if isinstance(template, ChatTemplate):
        own = tok.chat_template.get("default") if isinstance(tok.chat_template, dict) else tok.chat_template
        if not own:
            raise UserError("template=chat_template: this tokenizer has no chat_template "
                            "(use human_assistant or llama2_inst)")
        return system_preamble(own, template.system)
    raise ValueError(f"template {template.name!r} has no chat_template form")


# Conversations a tokenizer's own template is compared on before it is replaced.
_PROBES = [[Turn("human", "你好")], [Turn("human", "1 加 1 等于几？"), Turn("assistant", "二"), Turn("human", "再加 3 呢？")]]


def _renders(tok: Any, chat_template: str, system: Optional[str]) -> list[Optional[str]]:
    out = []
    for turns in _PROBES:
        messages = ([{"role": "system", "content": system}] if system is not None else []) + \
            [{"role": "user" if t.role == "human" else "assistant", "content": t.text} for t in turns]
        try:
            out.append(tok.apply_chat_template(messages, chat_template=chat_template, tokenize=False,
                                               add_generation_prompt=True))
        except Exception:  # a template that refuses a conversation renders differently
            out.append(None)
    return out


def renders_alike(tok: Any, a: str, b: str) -> bool:
    """Whether two chat templates render the probe conversations alike (no, the run's and a
    made-up system message)."""
    return all(_renders(tok, a, s) == _renders(tok, b, s) for s in (None, "请用中文回答。"))


def publish_template(tok: Any, template: Template) -> list[str]:
    """Set `tok.chat_template` to the template the model trained with; returns what to report. A
    tokenizer's own template that renders otherwise is kept under the name `original` (a clash:
    reported, not lost); one that renders alike is kept as it is."""
    new = published_template(template, tok)
    current = tok.chat_template
    default = current.get("default") if isinstance(current, dict) else current
    if not default or isinstance(template, ChatTemplate):
        named = {k: v for k, v in current.items() if k != "default"} if isinstance(current, dict) else {}
        tok.chat_template = {"default": new, **named} if named else new
        return []
    if default == new or renders_alike(tok, default, new):
        return []
    named = dict(current) if isinstance(current, dict) else {"default": current}
    name = ORIGINAL if ORIGINAL not in named else next(f"{ORIGINAL}_{i}" for i in range(2, 99)
                                                         if f"{ORIGINAL}_{i}" not in named)
    named[name] = named.pop("default")
    tok.chat_template = {"default": new, **named}
    return [f"note: the tokenizer's own chat_template renders conversations differently from template="
            f"{template.name}, which this model trained with: the training template is published as the "
            f"chat_template and the tokenizer's own is kept as the named template {name!r} "
            f"(apply_chat_template(..., chat_template={name!r}))"]


def go_string(text: str) -> str:
    """`text` as a Go string constant (Ollama's templates are Go's text/template)."""
    import json

    return json.dumps(text, ensure_ascii=False)  # JSON's escapes are a subset of Go's


def ollama_template(template: LayoutTemplate, bos: str, eos: str) -> str:
    """The Ollama TEMPLATE of a layout template (the system prompt comes from `.System`: the Modelfile's
    SYSTEM or a request's system message). Ollama puts the BOS token in front of the prompt itself
    (the GGUF's add_bos_token), so the first question's leading BOS is left out; every later one is
    text that Ollama reads as the special token. Go templates have no trim: contents go in as typed."""
    lay = template.layout.resolved(bos, eos)
    if not template.layout.question[0].startswith("{bos}"):
        raise ValueError(f"template {template.name}: a conversation must start with BOS for Ollama's own BOS")
    first_question = template.layout.question[0][len("{bos}"):].replace("{eos}", eos)

    def text(piece: str) -> str:
        return "{{ " + go_string(piece) + " }}" if piece else ""

    lines = ["{{- $first := true }}", "{{- range .Messages }}", '{{- if eq .Role "user" }}',
             "{{- $content := .Content }}"]
    if lay.system is not None:
        lines.append("{{- if and $first $.System }}{{- $content = print " + go_string(lay.system[0]) + " $.System "
                     + go_string(lay.system[1]) + " .Content }}{{- end }}")
    lines += ["{{- if $first }}" + text(first_question) + "{{- else }}" + text(lay.question[0]) + "{{- end }}",
              "{{- $content }}" + text(lay.question[1]), "{{- $first = false }}",
              '{{- else if eq .Role "assistant" }}' + text(lay.answer_head) + text(lay.answer[0]) + "{{- .Content }}"
              + text(lay.answer[1]), "{{- end }}", "{{- end }}"]
    if lay.answer_head:
        lines.append("{{- " + go_string(lay.answer_head) + " }}")
    return "\n".join(lines)
