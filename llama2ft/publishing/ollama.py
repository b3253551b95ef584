"""The Ollama Modelfile written beside an exported GGUF (`ollama create NAME -f FILE`): FROM the GGUF,
TEMPLATE the training template in Ollama's (Go template) syntax, made from the same definition as
training's (`data/chat_formats.ollama_template`), SYSTEM the run's system prompt, the turn end as a
stop text, and the sampling defaults llama2ft's chat uses (`inference/sampling.py`)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from llama2ft.core.errors import UserError
from llama2ft.data.chat_formats import ollama_template
from llama2ft.data.templates import LayoutTemplate, get_template
from llama2ft.inference.sampling import Sampling


def modelfile_path(gguf: Path) -> Path:
    """`my-chat.q4_k_m.gguf` -> `my-chat.q4_k_m.Modelfile` (one per GGUF: several quants can share a folder)."""
    return gguf.with_name(gguf.stem + ".Modelfile")


def _quoted(text: str, what: str) -> str:
    if '"""' in text:
        raise UserError(f"the {what} contains three double quotes, which an Ollama Modelfile cannot hold")
    return f'"""{text}"""'


def modelfile(gguf_name: str, template_name: str, system: Optional[str], tok: Any, context_length: int,
              sampling: Sampling = Sampling()) -> Optional[str]:
    """The Modelfile's text, or None for a template Ollama's syntax cannot be made from (the
    tokenizer's own chat_template: Jinja, not Go)."""
    template = get_template(template_name, system)
    if not isinstance(template, LayoutTemplate):
        return None
    lines = [f"# Ollama: ollama create NAME -f {modelfile_path(Path(gguf_name)).name}   (written by llama2ft-export; "
             f"template {template_name})",
             f"FROM ./{gguf_name}",
             f"TEMPLATE {_quoted(ollama_template(template, tok.bos_token, tok.eos_token), 'template')}"]
    if system and template.layout.system is not None:
        lines.append(f"SYSTEM {_quoted(system, 'system prompt')}")
    lines += [f'PARAMETER stop "{tok.eos_token}"',
              f"PARAMETER temperature {0.0 if sampling.greedy else sampling.temperature}",
              f"PARAMETER top_p {sampling.top_p}",
              f"PARAMETER top_k {sampling.top_k}",
              f"PARAMETER repeat_penalty {sampling.repetition_penalty}",
              f"PARAMETER num_predict {sampling.max_new_tokens}",
              f"PARAMETER num_ctx {context_length}"]
    return "\n".join(lines) + "\n"


def write_modelfile(source: Path, gguf: Path) -> Optional[Path]:
    """The Modelfile beside `gguf` for a llama2ft folder (its llama2ft.json names the template), written
    atomically; None when there is none to write (a folder merged elsewhere, or template=chat_template)."""
    import json

    from llama2ft.core.files import atomic_file
    from llama2ft.model.loading import open_tokenizer
    from llama2ft.model.run_folder import read_chat_meta

    meta = read_chat_meta(source)
    if not meta.get("template"):
        return None
    config = json.loads((source / "config.json").read_text())
    text = modelfile(gguf.name, meta["template"], meta.get("system"), open_tokenizer(str(source)),
                     int(config.get("max_position_embeddings", 4096)))
    if text is None:
        return None
    path = modelfile_path(gguf)
    with atomic_file(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return path
