"""Preprocessing cache: tokenized (and packed) splits keyed by everything that shapes them; an entry
is a folder that appears under its key only once complete (see `pipeline.prepare_data`)."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Optional

from llama2ft.data.mixing import as_list

CACHE_VERSION = 5  # bump when the data step's output changes for the same inputs
STATS_FILE = "stats.json"
# data.* keys that do not change the tokenized result (the files count through their contents)
_NOT_KEYED = ("cache", "cache_dir", "train_file", "eval_file", "preview_rows", "allow_changed")


def default_cache_dir() -> Path:
    return Path(os.environ.get("LLAMA2FT_CACHE_DIR", Path.home() / ".cache" / "llama2ft" / "data"))


def file_digest(path: str) -> str:
    """The sha256 of a data file's bytes; of a folder (a datasets save_to_disk folder), the sha256 of its
    files' relative names and digests. The one fingerprint of an input: the cache key and a run's
    provenance.json both take it from here, and a file is read once per run (`forget_digests`)."""
    p = Path(path).expanduser()
    if not p.is_dir():
        return _digest_of_file(p)
    h = hashlib.sha256()
    for q in sorted(x for x in p.rglob("*") if x.is_file()):
        h.update(f"{q.relative_to(p).as_posix()}\0{_digest_of_file(q)}\n".encode("utf-8"))
    return h.hexdigest()


def file_size(path: str) -> int:
    """Bytes of a data file, or of every file of a folder."""
    p = Path(path).expanduser()
    return sum(q.stat().st_size for q in p.rglob("*") if q.is_file()) if p.is_dir() else p.stat().st_size


def forget_digests() -> None:
    """Start a run: every file is read again once (a digest never outlives the run that computed it)."""
    _DIGESTS.clear()


def _digest_of_file(p: Path) -> str:
    st = p.stat()
    # the same file unchanged: same inode, size and modification/change times (nanoseconds)
    key = (str(p.resolve()), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    if key not in _DIGESTS:
        _DIGESTS[key] = _sha256(p)
    return _DIGESTS[key]


def _sha256(p: Path) -> str:
    h = hashlib.sha256()
    with open(p, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


_DIGESTS: dict[tuple, str] = {}


def tokenizer_digest(tokenizer: Any) -> str:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    text = backend.to_str() if backend is not None else json.dumps(sorted(tokenizer.get_vocab().items()))
    extra = [tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id]
    return hashlib.sha256((text + json.dumps(extra)).encode("utf-8")).hexdigest()


def cache_key(data: dict, tokenizer: Any, template: tuple[str, Optional[str]], split_seed: Optional[int],
              rows: str = "dialogues") -> str:
    """The key of one preprocessing: `data` is the data config as a plain dict, `template` its
    (name, system), `split_seed` the seed of a held-out split (None when there is none), `rows` what
    the files hold (`splits.RowKind.name`)."""
    settings = {k: v for k, v in data.items() if k not in _NOT_KEYED}
    parts = {
        "version": CACHE_VERSION,
        "rows": rows,
        # the suffix says how a file is read
        "train": [(Path(path).suffix.lower(), file_digest(path)) for path in as_list(data["train_file"])],
        "eval": (Path(data["eval_file"]).suffix.lower(), file_digest(data["eval_file"])) if data.get("eval_file")
        else None,
        "split_seed": split_seed,
        "tokenizer": tokenizer_digest(tokenizer),
        "template": list(template),
        "data": settings,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode("utf-8")).hexdigest()[:24]


def cache_path(cache_dir: Optional[str], key: str) -> Path:
    return (Path(cache_dir) if cache_dir else default_cache_dir()) / key


def is_complete(path: Path) -> bool:
    """An entry is published (renamed into place) only once complete: its stats file says so."""
    return (path / STATS_FILE).is_file()


def write_stats(path: Path, stats: dict) -> None:
    (path / STATS_FILE).write_text(json.dumps(stats, indent=2, ensure_ascii=False), encoding="utf-8")
