#!/usr/bin/env python
"""Build the embedded benchmark sample: four-way choice questions about Chinese number readings (the task the
embedded tiny model learns), written in the official C-Eval and CMMLU release layouts, so that
`llama2ft-eval task=benchmark benchmark_data=sample` runs offline. None of it comes from C-Eval or CMMLU: only
the folder layout, the column names and four of their subject names (so that lm-eval's prompt for each
subject and the benchmarks' categories apply as they would to the real files).

Run from the repository root (deterministic, well under a second)::

    .venv/bin/python scripts/build_benchmark_sample.py          # writes data/benchmarks/{ceval,cmmlu}/

C-Eval layout: dev/{subject}_dev.csv (with an explanation column) and val/{subject}_val.csv, columns
id,question,A,B,C,D,answer. CMMLU layout: dev/{subject}.csv and test/{subject}.csv, columns ,Question,A,B,C,D,Answer
(the first column is an unnamed row index).
"""
from __future__ import annotations

import argparse
import csv
import io
import random
import sys
from pathlib import Path
from typing import Callable

_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)
from build_tiny_assets import read_digits, read_number  # noqa: E402

SEED = 20241201
N_DEV = 5  # few-shot examples per subject (num_fewshot defaults to 5)
N_SCORED = 12  # scored questions per subject
LETTERS = "ABCD"


def _near(rng: random.Random, n: int) -> int:
    """A number that is easy to confuse with n: two digits swapped, one digit changed, or a zero moved."""
    s = list(str(n))
    kind = rng.randrange(3)
    if kind == 0 and len(s) > 1:
        i, j = rng.sample(range(len(s)), 2)
        s[i], s[j] = s[j], s[i]
    elif kind == 1 and "0" in s[1:]:
        i = s.index("0", 1)
        s[i] = str(rng.randrange(1, 10))
    else:
        i = rng.randrange(len(s))
        s[i] = str((int(s[i]) + rng.randrange(1, 10)) % 10)
    text = "".join(s).lstrip("0") or "0"
    return int(text)


def _question(rng: random.Random, n: int, kind: str) -> tuple[str, list[str]]:
    """The question about n and its four distinct options, the right one first."""
    ask: dict[str, tuple[str, Callable[[int], str]]] = {
        "read": (f"数字 {n} 的中文读法是什么？", read_number),
        "arabic": (f"把“{read_number(n)}”写成阿拉伯数字。", str),
        "digits": (f"请把 {n} 逐位写成中文。", read_digits),
    }
    text, show = ask[kind]
    options = [show(n)]
    while len(options) < 4:
        other = show(_near(rng, n))
        if other not in options:
            options.append(other)
    return text, options


def _items(rng: random.Random, kind: str, count: int, used: set[int]) -> list[tuple[str, list[str], str]]:
    """`count` questions (question, options A-D, answer letter) on numbers not used before."""
    items = []
    while len(items) < count:
        n = rng.randrange(100, 10000) if rng.random() < 0.8 else rng.randrange(10, 100)
        if n in used:
            continue
        used.add(n)
        text, options = _question(rng, n, kind)
        right = rng.randrange(4)  # the answer letter, uniform: a model that always says "A" gets 25%
        order = options[1:]
        rng.shuffle(order)
        order.insert(right, options[0])
        items.append((text, order, LETTERS[right]))
    return items


# (benchmark, subject, question kind): real subject names, so lm-eval's descriptions and the categories apply
SUBJECTS = [
    ("ceval", "middle_school_mathematics", "read"),
    ("ceval", "high_school_chinese", "arabic"),
    ("cmmlu", "elementary_mathematics", "arabic"),
    ("cmmlu", "elementary_chinese", "digits"),
]


def _csv(rows: list[list[str]]) -> bytes:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(rows)
    return buf.getvalue().encode("utf-8")


def build(out: Path) -> dict[str, int]:
    rng = random.Random(SEED)
    used: set[int] = set()
    counts = {}
    for bench, subject, kind in SUBJECTS:
        dev, scored = _items(rng, kind, N_DEV, used), _items(rng, kind, N_SCORED, used)
        if bench == "ceval":
            files = {f"dev/{subject}_dev.csv": [["id", "question", "A", "B", "C", "D", "answer", "explanation"]]
                     + [[str(i), q, *opts, a, f"正确答案是{a}。"] for i, (q, opts, a) in enumerate(dev)],
                     f"val/{subject}_val.csv": [["id", "question", "A", "B", "C", "D", "answer"]]
                     + [[str(i), q, *opts, a] for i, (q, opts, a) in enumerate(scored)]}
        else:
            files = {f"dev/{subject}.csv": [["", "Question", "A", "B", "C", "D", "Answer"]]
                     + [[str(i), q, *opts, a] for i, (q, opts, a) in enumerate(dev)],
                     f"test/{subject}.csv": [["", "Question", "A", "B", "C", "D", "Answer"]]
                     + [[str(i), q, *opts, a] for i, (q, opts, a) in enumerate(scored)]}
        for name, rows in files.items():
            path = out / bench / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(_csv(rows))
        counts[f"{bench}/{subject}"] = len(scored)
    return counts


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out-dir", default="data/benchmarks")
    counts = build(Path(ap.parse_args(argv).out_dir))
    print(", ".join(f"{k}: {v} questions" for k, v in counts.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
