#!/usr/bin/env python
"""Build the small assets that llama2ft ships in the repository.

Run from the repository root (takes about two seconds, mostly imports)::

    .venv/bin/python scripts/build_tiny_assets.py

It (re)generates, deterministically:

* ``data/sample/train.csv`` and ``data/sample/dev.csv``: a tiny Chinese number
  task in the community Llama2-Chinese format, one ``text`` column per row::

      <s>Human: QUESTION\\n</s><s>Assistant: ANSWER\\n</s>

  Three kinds of question about a number 0..9999: write it in Chinese
  (407 -> 四百零七), read it digit by digit (407 -> 四零七), and write a Chinese
  number in Arabic digits (四百零七 -> 407).  About 10% of the rows are two-turn
  conversations.  Every number that appears in a dev question is held out of
  the training rows, so dev accuracy measures generalisation.

* ``data/tokenizer/``: a Llama-like byte-fallback BPE tokenizer
  (``<unk>``=0, ``<s>``=1, ``</s>``=2, ``<0x00>``..``<0xFF>``, one token per
  digit and per CJK character) trained with the ``tokenizers`` library on the
  sample text plus the general Chinese/English text in ``tiny_assets_corpus.py``, saved so
  that ``transformers.AutoTokenizer.from_pretrained("data/tokenizer")`` loads it
  offline.

Options: ``--out-dir`` (default ``data``), ``--check`` (also verify the round
trips and special ids after writing; on by default, ``--no-check`` skips it).

The task rows are generated here; the tokenizer code and its training text live in the helper
modules ``tiny_assets_tokenizer.py`` and ``tiny_assets_corpus.py`` next to this script.
"""

from __future__ import annotations

import argparse
import csv
import io
import random
import re
import sys
from pathlib import Path

# The helpers sit next to this script. Running it as a file already puts this folder on sys.path;
# adding it here also covers runpy / importing it from elsewhere (e.g. a test).
_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)
from tiny_assets_tokenizer import build_tokenizer, check_tokenizer, general_text, save_tokenizer  # noqa: E402

SEED = 20240601

# numbers 0..9999; share of questions by number of digits (short numbers are rare in a uniform draw)
LENGTH_WEIGHTS = {1: 0.05, 2: 0.20, 3: 0.35, 4: 0.40}
N_TRAIN_ROWS = 2000
N_DEV_ROWS = 60
MULTI_TURN_FRACTION = 0.10
# share of questions per task
TASK_WEIGHTS = {"read": 0.45, "digits": 0.25, "arabic": 0.30}

CN_DIGITS = "零一二三四五六七八九"
CN_UNITS = ["", "十", "百", "千"]

# Question templates.  "{n}" is the number written with Arabic digits.
READ_TEMPLATES = [
    "请用中文写出数字 {n}。",
    "{n} 用中文怎么写？",
    "数字 {n} 的中文读法是什么？",
]
# "{c}" is the Chinese reading; the answer is the number in Arabic digits.
ARABIC_TEMPLATES = [
    "把“{c}”写成阿拉伯数字。",
    "{c}用阿拉伯数字怎么写？",
]
DIGIT_TEMPLATES = [
    "请把 {n} 逐位写成中文。",
    "把数字 {n} 一位一位地用中文念出来。",
]


def read_number(n: int) -> str:
    """Standard Chinese reading of 0 <= n < 10000 (407 -> 四百零七, 15 -> 十五)."""
    if not 0 <= n < 10000:
        raise ValueError(n)
    if n == 0:
        return "零"
    s = str(n)
    out: list[str] = []
    pending_zero = False
    for i, ch in enumerate(s):
        d = int(ch)
        unit = CN_UNITS[len(s) - 1 - i]
        if d == 0:
            pending_zero = bool(out)
            continue
        if pending_zero:
            out.append("零")
            pending_zero = False
        out.append(CN_DIGITS[d] + unit)
    text = "".join(out)
    if 10 <= n < 20:  # 十五, not 一十五 (but 一百一十五 keeps the 一)
        text = text[1:]
    return text


def read_digits(n: int) -> str:
    """Digit-by-digit reading (407 -> 四零七)."""
    return "".join(CN_DIGITS[int(c)] for c in str(n))


def make_pair(rng: random.Random, n: int, task: str) -> tuple[str, str]:
    if task == "read":
        return rng.choice(READ_TEMPLATES).format(n=n), read_number(n)
    if task == "digits":
        return rng.choice(DIGIT_TEMPLATES).format(n=n), read_digits(n)
    return rng.choice(ARABIC_TEMPLATES).format(c=read_number(n)), str(n)


def number_of(question: str, answer: str) -> int:
    m = re.search(r"\d+", question)
    return int(m.group() if m else answer)


def format_row(pairs: list[tuple[str, str]]) -> str:
    return "".join(f"<s>Human: {q}\n</s><s>Assistant: {a}\n</s>" for q, a in pairs)


def pick_task(rng: random.Random) -> str:
    tasks = list(TASK_WEIGHTS)
    return rng.choices(tasks, weights=[TASK_WEIGHTS[t] for t in tasks])[0]


def draw_number(rng: random.Random, exclude: set[int]) -> int:
    lengths = list(LENGTH_WEIGHTS)
    while True:
        k = rng.choices(lengths, weights=[LENGTH_WEIGHTS[x] for x in lengths])[0]
        n = rng.randrange(0 if k == 1 else 10 ** (k - 1), 10**k)
        if n not in exclude:
            return n


def draw_rows(rng: random.Random, n_rows: int, exclude: set[int], distinct: bool) -> list[list[tuple[str, str]]]:
    """n_rows conversations, ~MULTI_TURN_FRACTION of them two-turn; numbers never in exclude
    (and, if distinct, never repeated)."""
    used = set(exclude)
    rows = []
    for _ in range(n_rows):
        turns = 2 if rng.random() < MULTI_TURN_FRACTION else 1
        pairs = []
        for _ in range(turns):
            n = draw_number(rng, used)
            if distinct:
                used.add(n)
            pairs.append(make_pair(rng, n, pick_task(rng)))
        rows.append(pairs)
    return rows


def build_rows() -> tuple[list[str], list[str]]:
    rng = random.Random(SEED)
    # dev: distinct held-out numbers; the ten one-digit numbers all stay in train
    dev = draw_rows(rng, N_DEV_ROWS, set(range(10)), distinct=True)
    dev_numbers = {number_of(q, a) for row in dev for q, a in row}
    train = draw_rows(rng, N_TRAIN_ROWS, dev_numbers, distinct=False)
    train_q = {q for row in train for q, _ in row}
    dev_q = {q for row in dev for q, _ in row}
    assert not train_q & dev_q, "dev question leaked into train"
    return [format_row(r) for r in train], [format_row(r) for r in dev]


def write_csv(path: Path, rows: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["text"])
    for r in rows:
        w.writerow([r])
    path.write_bytes(buf.getvalue().encode("utf-8"))  # UTF-8, no BOM, LF line ends


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out-dir", default="data")
    ap.add_argument("--check", action=argparse.BooleanOptionalAction, default=True)
    args = ap.parse_args(argv)
    out = Path(args.out_dir)

    train, dev = build_rows()
    write_csv(out / "sample" / "train.csv", train)
    write_csv(out / "sample" / "dev.csv", dev)

    tok = build_tokenizer(general_text(train))
    save_tokenizer(tok, out / "tokenizer")
    if args.check:
        check_tokenizer(out / "tokenizer")
    sizes = {p.name: p.stat().st_size for p in sorted((out / "sample").glob("*.csv"))}
    print(
        f"train rows {len(train)}, dev rows {len(dev)}, csv bytes {sizes}, "
        f"vocab {tok.get_vocab_size()} -> {out / 'tokenizer'}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
