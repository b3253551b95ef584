"""What the data step shows of the tokens: `preview.jsonl` (the first rows of each split as token ids
and labels, before packing) and the first row decoded with its trained part marked."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from llama2ft.data.templates import decode_text

MARKS = ("⟦", "⟧")


def write_preview(preview: list[dict], path: Path) -> Path:
    """One json object per line: {"split", "row" (the row's number in its file), "input_ids", "labels"} and,
    with several train files, "file"; preference rows add "rejected_ids" (pairs) or "desirable" (KTO)."""
    with path.open("w", encoding="utf-8") as f:
        for sample in preview:
            keys = ("split", "row", "input_ids", "labels", "rejected_ids", "desirable", "file")
            f.write(json.dumps({k: sample[k] for k in keys if k in sample}, ensure_ascii=False) + "\n")
    return path


def describe_first(tokenizer: Any, preview: list[dict]) -> str:
    """The first training row as text, what the model learns between ⟦ and ⟧."""
    if not preview:
        return ""
    first = preview[0]
    text = decode_text(tokenizer, first["input_ids"], first["labels"], MARKS)
    where = f"{first['file']} row {first['row']}" if "file" in first else f"row {first['row']}"
    return (f"first {first['split']} row ({where}, {len(first['input_ids'])} tokens; "
            f"trained text between {MARKS[0]} {MARKS[1]}):\n{text}")
