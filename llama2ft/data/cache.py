"""Preprocessing cache: tokenized (and packed) datasets keyed by everything that shapes them."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Optional

from llama2ft.core.files import atomic_dir

CACHE_VERSION = 1  # bump when the data step's output changes for the same inputs
# data.* keys that do not change the tokenized result (the files count through their contents)
_NOT_KEYED = ("cache", "cache_dir", "train_file", "eval_file")


def default_cache_dir() -> Path:
    return Path(os.environ.get("LLAMA2FT_CACHE_DIR", Path.home() / ".cache" / "llama2ft" / "data"))


def file_digest(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def tokenizer_digest(tokenizer: Any) -> str:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    text = backend.to_str() if backend is not None else json.dumps(sorted(tokenizer.get_vocab().items()))
    extra = [tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id]
    return hashlib.sha256((text + json.dumps(extra)).encode("utf-8")).hexdigest()


def cache_key(data: dict, tokenizer: Any, template: tuple[str, Optional[str]], split_seed: Optional[int]) -> str:
    """The key of one preprocessing: `data` is the data config as a plain dict, `template` its
    (name, system), `split_seed` the seed of a held-out split (None when there is none)."""
    settings = {k: v for k, v in data.items() if k not in _NOT_KEYED}
    parts = {
        "version": CACHE_VERSION,
        "train": file_digest(data["train_file"]),
        "eval": file_digest(data["eval_file"]) if data.get("eval_file") else None,
        "split_seed": split_seed,
        "tokenizer": tokenizer_digest(tokenizer),
        "template": list(template),
        "data": settings,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode("utf-8")).hexdigest()[:24]


def cache_path(cache_dir: Optional[str], key: str) -> Path:
    return (Path(cache_dir) if cache_dir else default_cache_dir()) / key


def load(path: Path) -> Optional[tuple[Any, Optional[Any], dict]]:
    """(train, eval, stats) from a complete cache entry, or None."""
    if not (path / "stats.json").is_file():
        return None
    from datasets import load_from_disk

    stats = json.loads((path / "stats.json").read_text(encoding="utf-8"))
    train = load_from_disk(str(path / "train"))
    evals = load_from_disk(str(path / "eval")) if (path / "eval").is_dir() else None
    return train, evals, stats


def save(path: Path, train: Any, evals: Optional[Any], stats: dict) -> None:
    """Write atomically: a folder that exists under its final name is complete; when another
    process finished the same entry first, its copy is kept."""
    with atomic_dir(path, exists="keep") as tmp:
        train.save_to_disk(str(tmp / "train"))
        if evals is not None:
            evals.save_to_disk(str(tmp / "eval"))
        (tmp / "stats.json").write_text(json.dumps(stats, indent=2), encoding="utf-8")
