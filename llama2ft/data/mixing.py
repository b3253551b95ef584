"""Several training files with weights: `data.train_file=[a.jsonl,b.csv]`, `data.weights=[2,1]`.

A weight is how many times each of that file's rows enters an epoch: 2 writes every row twice, 0.5
writes a seeded half of them, 2.5 every row twice and a seeded half a third time. The rows chosen for a
fraction depend only on the run's seed and the file's place in the list, so a run is reproducible.
"""
from __future__ import annotations

import math
import random
from array import array
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional


def as_list(value: Any) -> list[Any]:
    """A config value that may be one item or a list of them, as a list (None: empty)."""
    if value is None:
        return []
    if isinstance(value, (str, Path)) or not hasattr(value, "__iter__"):
        return [value]
    return list(value)


def train_files(data: Any) -> list[str]:
    return [str(f) for f in as_list(data.train_file)]


def file_weights(data: Any) -> list[float]:
    """One weight per training file (1 each when data.weights is not set)."""
    weights = as_list(getattr(data, "weights", None))
    return [float(w) for w in weights] if weights else [1.0] * len(train_files(data))


def input_problems(data: Any) -> list[str]:
    """The config problems of data.train_file, data.eval_file and data.weights (for the training config's
    checks): files that do not exist, weights that do not fit the files."""
    files, weights = as_list(data.train_file), as_list(getattr(data, "weights", None))
    problems = [f"data.{key}={str(path)!r}: file not found" for key, paths in
                (("train_file", files), ("eval_file", as_list(data.eval_file))) for path in paths
                if not Path(str(path)).expanduser().exists()]
    if not files:
        problems.append("data.train_file: name at least one file")
    if not weights:
        return problems
    if len(weights) != len(files):
        problems.append(f"data.weights has {len(weights)} weights for {len(files)} train files: give one per file")
    numbers = []
    for w in weights:
        try:
            numbers.append(float(w))
        except (TypeError, ValueError):
            problems.append(f"data.weights: {w!r} is not a number")
    bad = [w for w in numbers if w < 0 or not math.isfinite(w)]
    if bad:
        problems.append(f"data.weights={list(weights)}: a weight must be a finite number >= 0 (times a file's rows "
                        "enter an epoch)")
    elif numbers and not any(numbers):
        problems.append(f"data.weights={list(weights)}: at least one weight must be > 0")
    return problems


def copies(rows: Sequence[int], weight: float, seed: int, file_index: int) -> array:
    """Per row number (index into the result), how many times the row enters an epoch: `rows` are the
    file's usable training rows, each written int(weight) times, and a seeded share of them (the
    weight's fraction) once more."""
    counts = array("I", bytes(4 * ((max(rows) + 1) if rows else 1)))
    whole = int(weight)
    extra = round((weight - whole) * len(rows))
    for row in rows:
        counts[row] = whole
    if extra:
        for i in random.Random(f"{seed}:{file_index}").sample(range(len(rows)), extra):
            counts[rows[i]] += 1
    return counts


def file_stats(path: str, weight: float, usable: int, skipped: int, held: int, counts: Optional[array]) -> dict:
    """The data_stats entry of one training file: its rows read, skipped, held out, and in an epoch."""
    return {"file": path, "weight": weight, "rows": usable, "rows_skipped": skipped, "held_out": held,
            "rows_per_epoch": int(sum(counts)) if counts is not None else 0}
