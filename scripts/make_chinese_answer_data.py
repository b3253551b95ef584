"""Write the embedded data of GRPO's Chinese-answer case into data/chinese_answer/ (deterministic, ~0.1 s):

    python scripts/make_chinese_answer_data.py [--out-dir DIR]

Llama-2-Chat answers most Chinese questions in English. The tiny model learns Chinese readings of numbers
(scripts/build_tiny_assets.py); to give it that habit honestly, it is fine-tuned on `sft.csv`: the sample
training rows, in which the answers to the questions that ask for Chinese (write a number in Chinese, read it
digit by digit) are in English words for ENGLISH_SHARE of the rows, drawn at random ("4046" -> "four
thousand forty-six", "407" -> "four zero seven"). Nothing in a question says which language its answer takes.

- `sft.csv`: the start's SFT data (community format, the same questions and numbers as data/sample/train.csv);
- `prompts.csv`: GRPO's prompts, the questions of those two kinds in the training rows, without any answer
  (a `prompt` column only): the `chinese_answer` reward alone has to raise the rate;
- `dev.csv`: the held-out questions of those two kinds from data/sample/dev.csv with their Chinese answers
  (community format: llama2ft-eval reads it as questions with references, GRPO as held-out prompts).
"""
from __future__ import annotations

import argparse
import csv
import random
import re
from pathlib import Path

from build_tiny_assets import DIGIT_TEMPLATES, READ_TEMPLATES, format_row, read_digits, read_number

ROOT = Path(__file__).resolve().parent.parent
ENGLISH_SHARE = 0.5
_ONES = "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen " \
        "seventeen eighteen nineteen".split()
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()
_TURN = re.compile(r"<s>Human: (.*?)\n</s><s>Assistant: (.*?)\n</s>", re.S)
_TEMPLATES = [(re.compile(re.escape(t).replace(r"\{n\}", r"(\d+)")), kind) for kind, ts in
              (("read", READ_TEMPLATES), ("digits", DIGIT_TEMPLATES)) for t in ts]


def english(n: int) -> str:
    """0 <= n < 10000 in English words (4046 -> four thousand forty-six)."""
    parts = []
    for value, name in ((1000, "thousand"), (100, "hundred")):
        if n >= value:
            parts.append(f"{_ONES[n // value]} {name}")
            n %= value
    if n >= 20:
        parts.append(_TENS[n // 10] + (f"-{_ONES[n % 10]}" if n % 10 else ""))
    elif n or not parts:
        parts.append(_ONES[n])
    return " ".join(parts)


def english_digits(n: int) -> str:
    return " ".join(_ONES[int(d)] for d in str(n))


def kind_of(question: str) -> tuple[str, int] | None:
    """("read" | "digits", the number) of a question that asks for Chinese, else None."""
    for pattern, kind in _TEMPLATES:
        m = pattern.fullmatch(question)
        if m:
            return kind, int(m.group(1))
    return None


def read_rows(path: Path) -> list[list[tuple[str, str]]]:
    with path.open(encoding="utf-8", newline="") as f:
        return [_TURN.findall(row["text"]) for row in csv.DictReader(f)]


def write(path: Path, column: str, values: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow([column])
        writer.writerows([v] for v in values)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out-dir", type=Path, default=ROOT / "data" / "chinese_answer")
    args = ap.parse_args(argv)
    rng = random.Random(34)
    sft, prompts = [], []
    for turns in read_rows(ROOT / "data" / "sample" / "train.csv"):
        answered = []
        for question, answer in turns:
            found = kind_of(question)
            if found is not None:
                prompts.append(question)
                if rng.random() < ENGLISH_SHARE:
                    kind, n = found
                    answer = english(n) if kind == "read" else english_digits(n)
                    assert (read_number(n) if kind == "read" else read_digits(n)) != answer
            answered.append((question, answer))
        sft.append(format_row(answered))
    dev = [format_row([(q, a)]) for turns in read_rows(ROOT / "data" / "sample" / "dev.csv") for q, a in turns[-1:]
           if kind_of(q) is not None]
    write(args.out_dir / "sft.csv", "text", sft)
    write(args.out_dir / "prompts.csv", "prompt", prompts)
    write(args.out_dir / "dev.csv", "text", dev)
    print(f"wrote {len(sft)} SFT rows, {len(prompts)} prompts and {len(dev)} held-out questions to {args.out_dir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
