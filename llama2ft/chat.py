"""llama2ft-chat: a streaming terminal chat with a model, one-shot answers, or a file of prompts.

    llama2ft-chat run=outputs/train/RUN                      # interactive: /reset, /system TEXT, /exit
    llama2ft-chat run=outputs/train/RUN prompt="你好"          # answer once
    llama2ft-chat run=outputs/train/RUN prompts_file=q.txt   # answers -> q.txt.answers.jsonl
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Optional, TextIO

import hydra
from omegaconf import DictConfig

from llama2ft import CONFIG_DIR
from llama2ft.csvfile import read_texts
from llama2ft.dialogue import Turn
from llama2ft.errors import DataError, UserError, exit_on_user_error
from llama2ft.generation import ChatModel, Sampling
from llama2ft.talk import check, load, quote_text_overrides

HELP = "commands: /reset (forget the conversation), /system TEXT (set the system prompt), /exit"


def read_prompts(path: Path, column: str) -> list[str]:
    """Prompts from a .csv column or a text file (one per line; blank lines skipped)."""
    prompts = [p.strip() for p in read_texts(path, column, column_key="prompts_column")]
    if not prompts:
        raise DataError(f"{path}: no prompts in it")
    return prompts


def answer_file(chat: ChatModel, samp: Sampling, system: Optional[str], prompts: list[str], output: Path) -> None:
    """Answer every prompt (batched) into a jsonl written atomically: a killed run leaves no half file."""
    replies = chat.chat_batch([[Turn("human", p)] for p in prompts], samp, system)
    tmp = output.with_name(f".{output.name}.tmp-{os.getpid()}")
    with tmp.open("w", encoding="utf-8") as f:
        for prompt, r in zip(prompts, replies):
            f.write(json.dumps({"prompt": prompt, "answer": r.text, "finish_reason": r.finish_reason,
                                "prompt_tokens": r.prompt_tokens, "completion_tokens": r.completion_tokens},
                               ensure_ascii=False) + "\n")
    tmp.replace(output)
    print(f"wrote {len(replies)} answers to {output}", flush=True)


def stream_answer(chat: ChatModel, turns: list[Turn], samp: Sampling, system: Optional[str], out: TextIO) -> str:
    gen = chat.stream(turns, samp, system)
    for piece in gen:
        out.write(piece)
        out.flush()
    out.write("\n")
    if gen.reply.finish_reason == "length":
        out.write(f"[stopped at max_new_tokens={samp.max_new_tokens}]\n")
    if gen.reply.dropped_turns:
        out.write(f"[the oldest {gen.reply.dropped_turns} turn(s) were left out to fit the context]\n")
    out.flush()
    return gen.reply.text


def interactive(chat: ChatModel, samp: Sampling, system: Optional[str]) -> None:
    print(f"llama2ft chat with {chat.name} (template {chat.template.name}). {HELP}", flush=True)
    history: list[Turn] = []
    while True:
        try:
            line = input("\nyou> ")
        except EOFError:
            print()
            return
        text = line.strip()
        if text in ("/exit", "/quit"):
            return
        if text == "/reset":
            history = []
            print("(conversation cleared)")
            continue
        if text == "/system" or text.startswith("/system "):
            system = text[len("/system"):].strip()
            history = []
            print(f"(system prompt {'set' if system else 'cleared'}; conversation cleared)")
            continue
        if text.startswith("/"):
            print(f"unknown command {text.split()[0]}; {HELP}")
            continue
        if not text:
            continue
        turns = [*history, Turn("human", text)]
        sys.stdout.write("assistant> ")
        try:
            answer = stream_answer(chat, turns, samp, system, sys.stdout)
        except UserError as exc:
            print(f"\nerror: {exc}", file=sys.stderr, flush=True)
            continue
        history = [*turns, Turn("assistant", answer)]


def run_chat(cfg: DictConfig) -> None:
    extra = []
    if cfg.prompt is not None and cfg.prompts_file is not None:
        extra.append("prompt= and prompts_file= exclude each other")
    if cfg.prompt is not None and not str(cfg.prompt).strip():
        extra.append("prompt: the message is empty")
    prompts_file = Path(cfg.prompts_file).expanduser() if cfg.prompts_file else None
    if prompts_file is not None and not prompts_file.is_file():
        extra.append(f"prompts_file={cfg.prompts_file!r}: file not found")
    output = Path(cfg.output).expanduser() if cfg.output else (
        prompts_file.with_name(prompts_file.name + ".answers.jsonl") if prompts_file else None)
    if output is not None and output.exists():
        extra.append(f"output={output}: already exists (choose another output=)")
    spec, samp = check(cfg, extra)
    prompts = read_prompts(prompts_file, cfg.prompts_column) if prompts_file else None
    chat = load(spec)
    system = spec.system
    if prompts is not None:
        answer_file(chat, samp, system, prompts, output)
    elif cfg.prompt is not None:
        stream_answer(chat, [Turn("human", str(cfg.prompt))], samp, system, sys.stdout)
    else:
        interactive(chat, samp, system)


@hydra.main(config_path=str(CONFIG_DIR), config_name="chat", version_base="1.3")
@exit_on_user_error
def _hydra_main(cfg: DictConfig) -> None:
    run_chat(cfg)


def main() -> None:
    sys.argv[1:] = quote_text_overrides(sys.argv[1:])
    _hydra_main()


if __name__ == "__main__":
    sys.exit(main())
