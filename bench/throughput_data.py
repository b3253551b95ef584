"""Rows and batches for bench/train_throughput.py: the community-format rows (shared csv or generated),
encoded with llama2ft's `encode_dialogue`, and the two ways of batching them (baseline: padded, one sample
per sequence; llama2ft: packed rows whose samples restart their positions), with the counts the figures need per batch."""
from __future__ import annotations

import argparse
import math
import random
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

_REPO = str(Path(__file__).resolve().parents[1])
if _REPO not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, _REPO)
from llama2ft.data.collators import PackedCollator, PadCollator  # noqa: E402
from llama2ft.data.csv_reader import read_column  # noqa: E402
from llama2ft.data.dialogue import parse_dialogue  # noqa: E402
from llama2ft.data.packing import pack_columns  # noqa: E402
from llama2ft.data.templates import IGNORE_INDEX, encode_dialogue, get_template  # noqa: E402

SHARED_CSV = Path(__file__).resolve().parents[2] / "shared" / "data" / "dev_sft_sharegpt.csv"
_WORDS = ("the model data answer question time because people system example first use "
          "训练 模型 数据 问题 回答 因为 我们 可以 一个 中文").split()


def synthetic_rows(n: int, seed: int) -> list[str]:
    """Community-format rows shaped like the shared file: lognormal target lengths (median 4,000 characters,
    sigma 1.4, 71 to 300,000), several turns, ~10% ending with an unanswered Human turn. 200 rows give a mean
    of ~1,530 tokens after truncation at 2048, 57% of rows truncated, 74% trained tokens (shared: 1,533, 54%, 74%)."""
    rng, rows = random.Random(seed), []
    for _ in range(n):
        chars = int(min(300_000, max(71, rng.lognormvariate(math.log(4000), 1.4))))
        turns = max(1, min(20, chars // rng.randint(800, 3000)))
        text = ""
        for _ in range(turns):
            q = " ".join(rng.choices(_WORDS, k=max(2, chars // turns // 5 // 4)))
            a = " ".join(rng.choices(_WORDS, k=max(2, chars // turns * 4 // 5 // 4)))
            text += f"<s>Human: {q}\n</s><s>Assistant: {a}\n</s>"
        if rng.random() < 0.1:
            text += "<s>Human: " + " ".join(rng.choices(_WORDS, k=20)) + "\n</s>"
        rows.append(text)
    return rows


def load_samples(args: argparse.Namespace, tok: Any) -> tuple[list[tuple[list[int], list[int]]], str]:
    """(input_ids, answers-only labels) per usable row, truncated at max_seq_len, in a seeded random order."""
    path = Path(args.data) if args.data else SHARED_CSV
    if args.data and not path.is_file():
        raise SystemExit(f"--data {path}: no such file")
    if not args.synthetic and path.is_file():
        texts, label = [t for _, t in read_column(path)], ("shared sharegpt" if not args.data else str(path))
    else:
        texts, label = synthetic_rows(200, args.seed), "synthetic (sharegpt-like lengths)"
    template, out = get_template("human_assistant"), []
    for text in texts:
        try:
            enc = encode_dialogue(template, tok, parse_dialogue(text))
        except ValueError:
            continue
        ids, labels = enc.input_ids[: args.max_seq_len], enc.labels[: args.max_seq_len]
        if any(x != IGNORE_INDEX for x in labels[1:]):  # as llama2ft: drop rows with nothing to learn
            out.append((ids, labels))
    random.Random(args.seed).shuffle(out)
    return out, label


@dataclass
class Batch:
    tensors: dict[str, torch.Tensor]
    samples: int
    real: int  # non-padding tokens
    trained: int  # labels that count in the loss (after the one-token shift)
    sq: int  # sum of sample_len^2 (causal attention FLOPs)


def _batch(tensors: dict[str, torch.Tensor], lengths: list[int], samples: int) -> Batch:
    trained = int((tensors["labels"][:, 1:] != IGNORE_INDEX).sum())
    return Batch(tensors, samples, sum(lengths), trained, sum(n * n for n in lengths))


def baseline_batches(samples: list[tuple[list[int], list[int]]], rows: int, pad_id: int, seed: int) -> list[Batch]:
    order = list(range(len(samples)))
    random.Random(seed + 1).shuffle(order)
    collate, out = PadCollator(pad_id, multiple_of=8), []
    for i in range(0, len(order), rows):
        group = [samples[j][0] for j in order[i:i + rows]]
        out.append(_batch(collate([{"input_ids": g, "labels": g} for g in group]), [len(g) for g in group], len(group)))
    return out


def packed_batches(samples: list[tuple[list[int], list[int]]], rows: int, capacity: int, pad_id: int,
                   seed: int, multiple_of: int = 8) -> list[Batch]:
    cols = pack_columns([s[0] for s in samples], [s[1] for s in samples], capacity)
    feats = [dict(zip(cols, vals)) for vals in zip(*cols.values())]
    random.Random(seed + 1).shuffle(feats)
    collate, out = PackedCollator(pad_id, multiple_of), []
    for i in range(0, len(feats), rows):
        group = feats[i:i + rows]
        lengths = [n for f in group for n in f["seq_lens"]]  # samples restart positions at 0
        out.append(_batch(collate(group), lengths, len(lengths)))
    return out
