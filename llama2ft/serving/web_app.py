"""The Gradio web chat of `llama2ft-web`: streaming answers, per-session history, sampling controls.

Each browser session keeps its own history (Gradio passes it to every call) and every request gets its
own streamer from the generation core, so answers never leak between users (the community script
shared one streamer among all of them).
"""
from __future__ import annotations

from contextlib import nullcontext
from dataclasses import replace
from typing import Any, Iterator, Optional

from llama2ft.core.errors import UserError
from llama2ft.inference.engine import ChatModel
from llama2ft.inference.messages import message_text, to_turns
from llama2ft.inference.sampling import Sampling
from llama2ft.serving.drain import Drain


def parse_auth(value: Optional[str]) -> Optional[tuple[str, str]]:
    if value is None:
        return None
    user, sep, password = str(value).partition(":")
    if not sep or not user or not password:
        raise ValueError("auth must be user:password")
    return user, password


def respond(chat: ChatModel, defaults: Sampling, message: str, history: list[dict], system: str, temperature: float,
            top_p: float, top_k: int, repetition_penalty: float, max_new_tokens: int) -> Iterator[str]:
    """Gradio's chat function: yields the growing answer. The page's controls override the app's sampling
    settings; do_sample and seed stay the app's."""
    import gradio as gr

    samp = replace(defaults, temperature=float(temperature), top_p=float(top_p), top_k=int(top_k),
                   repetition_penalty=float(repetition_penalty), max_new_tokens=int(max_new_tokens))
    problems = samp.problems()
    if problems:
        raise gr.Error("; ".join(problems))
    messages = [(m["role"], message_text(m["content"])) for m in history if m.get("role") in ("user", "assistant")]
    try:
        turns = to_turns([*messages, ("user", message)])
        gen = chat.stream(turns, samp, system.strip() if system and system.strip() else "")
        answer = ""
        for piece in gen:
            answer += piece
            yield answer
    except UserError as exc:
        raise gr.Error(str(exc)) from exc
    if gen.reply.finish_reason == "length":
        yield answer + f"\n\n*(stopped at max_new_tokens={samp.max_new_tokens})*"


def build_app(chat: ChatModel, samp: Sampling, title: str, concurrency: int, drain: Optional[Drain] = None) -> Any:
    """`drain`: counts each answer as work in flight (SIGTERM lets it finish, serving/drain.py)."""
    import gradio as gr

    def fn(message, history, system, temperature, top_p, top_k, repetition_penalty, max_new_tokens):
        with drain.counted() if drain is not None else nullcontext():
            yield from respond(chat, samp, message, history, system, temperature, top_p, top_k, repetition_penalty,
                               max_new_tokens)

    inputs = [
        gr.Textbox(value=chat.template.system or "", label="System prompt", lines=2,
                   info="used by the llama2_inst template; clear it for none"),
        gr.Slider(0.0, 2.0, value=samp.temperature, step=0.05, label="temperature (0 = greedy)"),
        gr.Slider(0.05, 1.0, value=samp.top_p, step=0.05, label="top_p"),
        gr.Slider(0, 200, value=samp.top_k, step=1, label="top_k (0 = off)"),
        gr.Slider(1.0, 2.0, value=samp.repetition_penalty, step=0.05, label="repetition_penalty"),
        gr.Slider(1, max(1, chat.context_length), value=min(samp.max_new_tokens, chat.context_length), step=1,
                  label="max_new_tokens"),
    ]
    return gr.ChatInterface(
        fn, additional_inputs=inputs, additional_inputs_accordion=gr.Accordion("Settings", open=False),
        title=title, description=f"model: {chat.name} · template: {chat.template.name}",
        concurrency_limit=concurrency, api_name="chat", flagging_mode="never", save_history=False)
