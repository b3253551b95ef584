"""llama2ft-web: a Gradio chat in the browser.

    llama2ft-web run=outputs/train/RUN                       # http://127.0.0.1:7860
    llama2ft-web run=outputs/train/RUN host=0.0.0.0 auth=me:secret

Each browser session keeps its own history (Gradio passes it to every call) and every request gets its
own streamer from the generation core, so answers never leak between users (the community script
shared one streamer among all of them).
"""
from __future__ import annotations

import sys
from typing import Any, Iterator, Optional

import hydra
from omegaconf import DictConfig

from llama2ft import CONFIG_DIR
from llama2ft.errors import UserError, exit_on_user_error
from llama2ft.generation import ChatModel, Sampling, message_text, to_turns
from llama2ft.talk import check, load, port_problems, quote_text_overrides, warn_if_exposed


def parse_auth(value: Optional[str]) -> Optional[tuple[str, str]]:
    if value is None:
        return None
    user, sep, password = str(value).partition(":")
    if not sep or not user or not password:
        raise ValueError("auth must be user:password")
    return user, password


def respond(chat: ChatModel, message: str, history: list[dict], system: str, temperature: float, top_p: float,
            top_k: int, repetition_penalty: float, max_new_tokens: int) -> Iterator[str]:
    """Gradio's chat function: yields the growing answer."""
    import gradio as gr

    samp = Sampling(temperature=float(temperature), top_p=float(top_p), top_k=int(top_k),
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


def build_app(chat: ChatModel, samp: Sampling, title: str, concurrency: int) -> Any:
    import gradio as gr

    def fn(message, history, system, temperature, top_p, top_k, repetition_penalty, max_new_tokens):
        yield from respond(chat, message, history, system, temperature, top_p, top_k, repetition_penalty,
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


def run_web(cfg: DictConfig) -> None:
    extra = []
    try:
        auth = parse_auth(cfg.auth)
    except ValueError as exc:
        extra.append(f"auth={cfg.auth!r}: {exc}")
        auth = None
    extra += port_problems(cfg.port)
    if int(cfg.concurrency) < 1:
        extra.append(f"concurrency={cfg.concurrency}: must be >= 1")
    spec, samp = check(cfg, extra)
    warn_if_exposed(str(cfg.host), auth is not None, "the chat", "password; set auth=user:password")
    chat = load(spec)
    app = build_app(chat, samp, str(cfg.title), int(cfg.concurrency))
    print(f"llama2ft-web: {chat.name} on http://{cfg.host}:{cfg.port}", flush=True)
    app.queue(default_concurrency_limit=int(cfg.concurrency)).launch(
        server_name=str(cfg.host), server_port=int(cfg.port), auth=auth, show_error=True, quiet=True,
        inbrowser=False, share=False)


@hydra.main(config_path=str(CONFIG_DIR), config_name="web", version_base="1.3")
@exit_on_user_error
def _hydra_main(cfg: DictConfig) -> None:
    run_web(cfg)


def main() -> None:
    sys.argv[1:] = quote_text_overrides(sys.argv[1:])
    _hydra_main()


if __name__ == "__main__":
    sys.exit(main())
