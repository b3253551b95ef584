"""Chinese vocabulary extension (`llama2ft-vocab`): learn Chinese pieces from a corpus and append them
to a Llama (byte-fallback BPE) tokenizer, with new ids after the existing ones so no piece changes id;
and the checks that prove it (ids kept, exact round trips, tokens per character)."""
from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from typing import Any, Iterable, Optional

from llama2ft.core.errors import DataError, UserError
from llama2ft.core.files import is_local_path
from llama2ft.core.text import CJK_RUN
from llama2ft.data.csv_reader import read_lines_or_column
from llama2ft.data.dialogue import DialogueFormatError, parse_dialogue

_MARKUP = re.compile(r"</?s>|^\s*(Human|Assistant):[ \t]?", re.MULTILINE)
REPORT = "vocab_extension.json"


# ---------------------------------------------------------------- corpus
def corpus_texts(path: str, column: str = "text", encoding: Optional[str] = None) -> list[str]:
    """Texts of a .csv column (community-format markup stripped: <s>, </s>, Human:/Assistant:) or
    the non-empty lines of a text file."""
    texts = read_lines_or_column(path, column, encoding)
    if Path(path).suffix.lower() == ".csv":
        texts = [t for t in map(_strip_markup, texts) if t.strip()]
    if not texts:
        raise DataError(f"{path} is empty: no text to learn Chinese pieces from")
    return texts


def _strip_markup(cell: str) -> str:
    """A community-format dialogue as plain text: turn contents one per line (other cells as they are)."""
    if "<s>" in cell:
        try:
            return "\n".join(turn.text for turn in parse_dialogue(cell))
        except DialogueFormatError:
            pass  # not quite the format: strip what looks like markup
    return _MARKUP.sub("", cell).strip("\n")


def chinese_runs(texts: Iterable[str]) -> list[str]:
    return [run for text in texts for run in CJK_RUN.findall(text)]


# ---------------------------------------------------------------- learning pieces
def learn_pieces(runs: list[str], size: int, min_frequency: int,
                 max_length: Optional[int] = None) -> tuple[list[str], list[tuple[str, str]]]:
    """(characters by falling frequency, BPE merges in training order) of a Chinese BPE of about
    `size` merges trained on the runs (each run is one word: merges never cross punctuation), with
    pieces of at most `max_length` characters."""
    from tokenizers import Tokenizer, models, trainers

    chars = Counter(ch for run in runs for ch in run)
    alphabet = [ch for ch, n in sorted(chars.items(), key=lambda kv: (-kv[1], kv[0])) if n >= min_frequency]
    tok = Tokenizer(models.BPE())
    trainer = trainers.BpeTrainer(vocab_size=len(chars) + size, min_frequency=min_frequency, show_progress=False,
                                  special_tokens=[], max_token_length=max_length and max_length + 1)
    tok.train_from_iterator(runs, trainer)
    # tokenizers 0.23 keeps pieces shorter than max_token_length (hence the +1); the filter makes the limit exact
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ", 1))
              for m in json.loads(tok.to_str())["model"]["merges"]]
    return alphabet, [(a, b) for a, b in merges if max_length is None or len(a + b) <= max_length]


def extend_spec(spec: dict, chars: list[str], merges: list[tuple[str, str]], total: int) -> tuple[int, bool]:
    """Append `chars`, then the pieces of `merges` (whose parts exist by then), to the BPE model of a
    tokenizer.json `spec` until it holds `total` ids. Returns (pieces added, pre-tokenizer changed)."""
    model = spec["model"]
    vocab: dict[str, int] = model["vocab"]
    old_merges = model["merges"]
    as_string = bool(old_merges) and isinstance(old_merges[0], str)  # tokenizers < 0.20 wrote "a b"
    known = {tuple(m.split(" ", 1)) if as_string else tuple(m) for m in old_merges}
    start = next_id = max(vocab.values(), default=-1) + 1
    for ch in chars:
        if next_id >= total:
            break
        if ch not in vocab:
            vocab[ch], next_id = next_id, next_id + 1
    for a, b in merges:
        if a not in vocab or b not in vocab or (a, b) in known:
            continue  # a part left out (rare or over budget), or a merge the base already has
        if a + b not in vocab:
            if next_id >= total:
                break
            vocab[a + b], next_id = next_id, next_id + 1
        # a new merge for a piece the base already has is kept too: it only makes that piece reachable
        old_merges.append(f"{a} {b}" if as_string else [a, b])
        known.add((a, b))
    return next_id - start, _join_cjk_runs(spec.get("pre_tokenizer"))


def _join_cjk_runs(pre: Optional[dict]) -> bool:
    """A pre-tokenizer that isolates every CJK character (the embedded one) isolates runs of them
    instead, so that multi-character pieces can form. With the old merges alone this changes no
    encoding: none of them joins two CJK characters (they never met)."""
    if not pre:
        return False
    if pre.get("type") == "Sequence":
        return any([_join_cjk_runs(p) for p in pre.get("pretokenizers", [])])
    regex = pre.get("pattern", {}).get("Regex") if pre.get("type") == "Split" else None
    if regex and "4E00" in regex.upper() and regex.startswith("[") and regex.endswith("]"):
        pre["pattern"]["Regex"] = regex + "+"
        return True
    return False


# ---------------------------------------------------------------- base tokenizer
def open_base(base: str) -> tuple[Any, dict]:
    """The base tokenizer and its tokenizer.json spec; UserError unless it is a byte-fallback BPE (Llama)."""
    from transformers import AutoTokenizer

    folder = Path(base).expanduser()
    if is_local_path(base) and not folder.exists():
        raise UserError(f"base={base!r}: folder not found")
    if folder.is_dir() and not any((folder / f).is_file() for f in ("tokenizer.json", "tokenizer.model")):
        raise UserError(f"base={base!r}: no tokenizer.json or tokenizer.model in this folder")
    try:
        tok = AutoTokenizer.from_pretrained(str(folder))
    except (OSError, ValueError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise UserError(f"base={base!r}: could not load the tokenizer: {first}") from exc
    backend = getattr(tok, "backend_tokenizer", None)
    spec = json.loads(backend.to_str()) if backend is not None else {}
    model = spec.get("model", {})
    if model.get("type") != "BPE" or not model.get("byte_fallback"):
        raise UserError(f"base={base!r}: only byte-fallback BPE tokenizers (Llama's) can be extended; "
                        f"this one is {model.get('type', type(tok).__name__)}"
                        f"{'' if model.get('type') != 'BPE' else ' without byte fallback'}")
    beyond = [t["content"] for t in spec.get("added_tokens", []) if t["id"] >= len(model["vocab"])]
    if beyond:
        raise UserError(f"base={base!r}: added tokens {beyond[:5]} sit after the BPE vocabulary; new pieces "
                        "could not follow it without changing their ids")
    return tok, spec


# ---------------------------------------------------------------- checks and figures
def tokens_per_char(tok: Any, texts: list[str]) -> float:
    chars = sum(len(t) for t in texts)
    ids = tok(texts, add_special_tokens=False)["input_ids"] if texts else []
    return sum(len(x) for x in ids) / max(1, chars)


def check_joined_runs(base_tok: Any, base_spec: dict, texts: list[str]) -> None:
    """UserError unless the base, with CJK runs joined by its pre-tokenizer but no new piece, encodes
    `texts` exactly as before (so only the new pieces change encodings)."""
    import copy

    from tokenizers import Tokenizer

    spec = copy.deepcopy(base_spec)
    _join_cjk_runs(spec.get("pre_tokenizer"))
    joined = Tokenizer.from_str(json.dumps(spec, ensure_ascii=False))
    before = base_tok(texts, add_special_tokens=False)["input_ids"]
    after = [e.ids for e in joined.encode_batch(texts, add_special_tokens=False)]
    changed = [t for t, b, a in zip(texts, before, after) if b != a]
    if changed:
        raise UserError(f"internal check failed: joining Chinese runs alone changes the encoding of "
                        f"{len(changed)} texts, e.g. {changed[0][:60]!r}")


def check_extension(base_tok: Any, ext_tok: Any, spec: dict, texts: list[str]) -> int:
    """UserError unless every base piece keeps its id, every new piece has the id the spec gave it,
    and each text the base round-trips still round-trips. Returns how many texts round-trip exactly."""
    old, new = base_tok.get_vocab(), ext_tok.get_vocab()
    moved = [p for p, i in old.items() if new.get(p) != i]
    if moved:
        raise UserError(f"internal check failed: {len(moved)} existing pieces changed id (e.g. {moved[:3]})")
    wrong = [p for p, i in spec["model"]["vocab"].items() if new.get(p) != i]
    if wrong:
        raise UserError(f"internal check failed: the saved tokenizer lost new pieces (e.g. {wrong[:3]})")

    def round_trips(tok: Any) -> list[bool]:
        ids = tok(texts, add_special_tokens=False)["input_ids"]
        return [tok.decode(x) == t for x, t in zip(ids, texts)]

    exact = round_trips(ext_tok)
    broken = [t for t, b, e in zip(texts, round_trips(base_tok), exact) if b and not e]
    if broken:
        raise UserError(f"internal check failed: {len(broken)} texts no longer round-trip, e.g. {broken[0][:60]!r}")
    return sum(exact)
