"""Write the embedded preference pairs: data/pairs/train.csv and data/pairs/dev.csv (deterministic, ~0.1 s).

    python scripts/make_preference_pairs.py [--out-dir DIR]

The sample SFT task (scripts/build_tiny_assets.py) reads every 2 as 二 (二千三百). Spoken Chinese says 两 for a
leading 2 before 百 or 千 (两千三百, 两百零五) and keeps 二 everywhere else (二十, 三百二十二, 一千二百). The pairs
teach exactly that: for a number whose first digit is a 2 in the hundreds or thousands place the 两 reading is
chosen and the SFT model's 二 reading rejected; for other numbers holding a 2 the correct 二 reading is chosen
and the over-generalised 两 (三百两十) rejected, so the model cannot learn "always 两". The tiny SFT model
starts by preferring 二 everywhere, so held-out preference accuracy starts low and must rise.

Columns: prompt, chosen, rejected. Half the prompts are plain question text, half community-format dialogues
ending with a Human turn (some with an earlier exchange), as a user's pairs file may mix them.
"""
from __future__ import annotations

import argparse
import csv
import random
from pathlib import Path

from build_tiny_assets import READ_TEMPLATES, format_row, read_number

ROOT = Path(__file__).resolve().parent.parent
TRAIN_PAIRS, DEV_PAIRS = 800, 60


def spoken(n: int) -> str:
    """The reading with 两 for a leading 2 in the hundreds or thousands place (2345 -> 两千三百四十五)."""
    text = read_number(n)
    return "两" + text[1:] if len(str(n)) in (3, 4) and str(n)[0] == "2" else text


def over_generalised(n: int, rng: random.Random) -> str:
    """A near miss: one 二 of a number that must keep 二 turned into 两 (三百二十 -> 三百两十)."""
    text = read_number(n)
    spots = [i for i, ch in enumerate(text) if ch == "二"]
    i = rng.choice(spots)
    return text[:i] + "两" + text[i + 1:]


def leading_two(n: int) -> bool:
    return len(str(n)) in (3, 4) and str(n)[0] == "2"


def draw(rng: random.Random, used: set[int], want_leading: bool) -> int:
    while True:
        if want_leading:
            n = rng.choice([rng.randrange(200, 300), rng.randrange(2000, 3000), rng.randrange(2000, 3000)])
        else:
            n = rng.randrange(10, 10000)
            if leading_two(n) or "2" not in str(n) or "二" not in read_number(n):
                continue
        if n not in used:
            used.add(n)
            return n


def prompt_for(rng: random.Random, n: int) -> str:
    question = rng.choice(READ_TEMPLATES).format(n=n)
    style = rng.random()
    if style < 0.5:
        return question
    if style < 0.8:
        return f"<s>Human: {question}\n</s>"
    m = rng.randrange(1, 10000)
    earlier = format_row([(rng.choice(READ_TEMPLATES).format(n=m), read_number(m))])
    return f"{earlier}<s>Human: {question}\n</s>"


def make_pairs(rng: random.Random, count: int, used: set[int]) -> list[dict[str, str]]:
    rows = []
    for k in range(count):
        n = draw(rng, used, want_leading=k % 5 < 3)  # 3 in 5 pairs teach 两, 2 in 5 keep 二
        chosen, rejected = (spoken(n), read_number(n)) if leading_two(n) else (read_number(n), over_generalised(n, rng))
        rows.append({"prompt": prompt_for(rng, n), "chosen": chosen, "rejected": rejected})
    return rows


def write(path: Path, rows: list[dict[str, str]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["prompt", "chosen", "rejected"], lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out-dir", type=Path, default=ROOT / "data" / "pairs")
    args = ap.parse_args(argv)
    rng, used = random.Random(15), set()
    dev = make_pairs(rng, DEV_PAIRS, used)  # dev first: its numbers never appear in train
    train = make_pairs(rng, TRAIN_PAIRS, used)
    write(args.out_dir / "train.csv", train)
    write(args.out_dir / "dev.csv", dev)
    print(f"wrote {len(train)} + {len(dev)} pairs to {args.out_dir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
