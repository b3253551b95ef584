"""llama2ft-chat: a streaming terminal chat with a model, one-shot answers, or a file of prompts.

    llama2ft-chat run=outputs/train/RUN                      # interactive: /reset, /system TEXT, /exit
    llama2ft-chat run=outputs/train/RUN prompt="你好"          # answer once
    llama2ft-chat run=outputs/train/RUN prompts_file=q.txt   # answers -> q.txt.answers.jsonl
"""
from __future__ import annotations

import sys
from pathlib import Path

from omegaconf import DictConfig

from llama2ft.config.hydra_app import TEXT_KEYS, hydra_command
from llama2ft.data.dialogue import Turn
from llama2ft.inference.settings import check, load
from llama2ft.serving.terminal import answer_file, interactive, read_prompts, stream_answer


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


main = hydra_command("chat", run_chat, text_keys=TEXT_KEYS)

if __name__ == "__main__":
    sys.exit(main())
