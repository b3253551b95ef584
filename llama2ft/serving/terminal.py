"""The terminal faces of `llama2ft-chat`: a streaming interactive chat with /reset, /system and /exit,
one streamed answer, and a file of prompts answered into a jsonl."""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional, TextIO

from llama2ft.core.errors import DataError, UserError
from llama2ft.core.files import atomic_file
from llama2ft.data.csv_reader import read_lines_or_column
from llama2ft.data.dialogue import Turn
from llama2ft.inference.engine import ChatModel
from llama2ft.inference.sampling import Sampling

HELP = "commands: /reset (forget the conversation), /system TEXT (set the system prompt), /exit"


def read_prompts(path: Path, column: str) -> list[str]:
    """Prompts from a .csv column or a text file (one per line; blank lines skipped)."""
    prompts = [p.strip() for p in read_lines_or_column(path, column, column_key="prompts_column")]
    if not prompts:
        raise DataError(f"{path}: no prompts in it")
    return prompts


def answer_file(chat: ChatModel, samp: Sampling, system: Optional[str], prompts: list[str], output: Path) -> None:
    """Answer every prompt (batched) into a jsonl written atomically: a killed run leaves no half file."""
    replies = chat.chat_batch([[Turn("human", p)] for p in prompts], samp, system)
    with atomic_file(output) as tmp, tmp.open("w", encoding="utf-8") as f:
        for prompt, r in zip(prompts, replies):
            f.write(json.dumps({"prompt": prompt, "answer": r.text, "finish_reason": r.finish_reason,
                                "prompt_tokens": r.prompt_tokens, "completion_tokens": r.completion_tokens},
                               ensure_ascii=False) + "\n")
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
