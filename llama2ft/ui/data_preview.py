"""See the data first: the studio runs `llama2ft-prepare` with the composed overrides into its own folder, then
shows what it wrote (model/run_folder.py: data_stats.json and preview.jsonl): the statistics, and the first rows'
tokens with the trained part highlighted."""
from __future__ import annotations

import html
import re
from pathlib import Path
from typing import Any

from llama2ft.model.run_folder import RunDir

COMMAND = "prepare"
SHOWN_ROWS = 3
_BYTE = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")
Piece = tuple[str, bool, list[int]]  # a token's text, whether it is trained, its id(s)


def prepare_args(overrides: list[str], folder: Path) -> list[str]:
    return [*overrides, f"hydra.run.dir={folder}"]


def stats_table(stats: dict) -> list[list[Any]]:
    """[figure, train, eval] for each count in data_stats.json (per-file details left to the file itself)."""
    held_out = stats.get("eval") if isinstance(stats.get("eval"), dict) else {}
    return [[key, value, held_out.get(key, "")] for key, value in stats.items()
            if isinstance(value, (int, float)) and not isinstance(value, bool)]


def token_pieces(tokenizer: Any, ids: list[int], labels: list[int]) -> list[Piece]:
    """(text, trained, ids) per token as the tokenizer splits the row; byte-fallback tokens of one character
    (`<0xE6><0x95><0xB0>`) become one piece showing the character."""
    pieces: list[Piece] = []
    pending: list[int] = []  # indexes of byte tokens not yet a whole character
    tokens = tokenizer.convert_ids_to_tokens(list(ids))
    for i, token in enumerate(tokens):
        byte = _BYTE.match(token or "")
        if byte is None:
            pieces += _flush(pending, tokens, ids, labels)
            pending = []
            pieces.append((str(token), labels[i] != -100, [ids[i]]))
            continue
        pending.append(i)
        try:
            bytes(int(_BYTE.match(tokens[j]).group(1), 16) for j in pending).decode("utf-8")
        except UnicodeDecodeError:
            if len(pending) < 4:
                continue
        pieces += _flush(pending, tokens, ids, labels)
        pending = []
    return pieces + _flush(pending, tokens, ids, labels)


def _flush(pending: list[int], tokens: list[str], ids: list[int], labels: list[int]) -> list[Piece]:
    if not pending:
        return []
    raw = bytes(int(_BYTE.match(tokens[j]).group(1), 16) for j in pending)
    return [(raw.decode("utf-8", errors="replace"), any(labels[j] != -100 for j in pending), [ids[j] for j in pending])]


def tokens_html(tokenizer: Any, preview: list[dict], rows: int = SHOWN_ROWS) -> str:
    """The first rows of the training split as token chips; the trained ones (labels kept) highlighted."""
    train = [p for p in preview if p.get("split") == "train"][:rows] or preview[:rows]
    parts = ['<div class="l2f-preview"><p><span class="l2f-tok l2f-trained">trained</span> tokens are what the '
             'model learns (labels kept); the others are masked out of the loss.</p>']
    for sample in train:
        pieces = token_pieces(tokenizer, sample["input_ids"], sample["labels"])
        where = f"{sample.get('file', '')} row {sample['row']}".strip()
        parts.append(f'<div class="l2f-row" data-row="{sample["row"]}"><div class="l2f-where">{html.escape(where)} · '
                     f'{len(sample["input_ids"])} tokens, {sum(t != -100 for t in sample["labels"])} trained</div>')
        for text, trained, piece_ids in pieces:
            shown = html.escape(text).replace("\n", "↵")
            cls = "l2f-tok l2f-trained" if trained else "l2f-tok"
            parts.append(f'<span class="{cls}" title="{" ".join(map(str, piece_ids))}">{shown}</span>')
        parts.append("</div>")
    return "".join(parts) + "</div>"


PREVIEW_CSS = """
.l2f-preview .l2f-row { margin: 0.6em 0; line-height: 2.0; }
.l2f-preview .l2f-where { font-size: 0.85em; color: #666; }
.l2f-tok { border: 1px solid #ccc; border-radius: 3px; padding: 1px 3px; margin: 1px; font-family: monospace; }
.l2f-tok.l2f-trained { background: #ffe08a; border-color: #d4a300; }
"""


def read_prepared(folder: Path) -> tuple[dict, list[dict]]:
    """data_stats.json and preview.jsonl of a finished prepare."""
    import json

    run = RunDir(folder)
    preview = [json.loads(line) for line in run.preview.read_text(encoding="utf-8").splitlines() if line.strip()]
    return run.read_stats(), preview
