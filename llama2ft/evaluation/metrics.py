"""Per-answer metrics of Chinese chat answers, and their aggregation per model and class.

Pure functions on strings (stdlib only), so they are cheap to test and to run on saved answers.
"""
from __future__ import annotations

import re
from collections import Counter
from typing import Any, Optional

from llama2ft.core.text import CJK_CLASS, is_cjk
from llama2ft.evaluation.questions import CLASSES

CHINESE_THRESHOLD = 0.5  # an answer is "in Chinese" when more than half of its letters are Chinese
# Degenerate repetition: either of two signals (see `is_degenerate`), calibrated on ~6,700 real
# answers (six Chinese chat models on AtomBulb's questions, Llama-2-Chat's English answers): fluent
# answers reach 0.35 (Chinese) / 0.45 (English) at the 99th percentile of `repetition`.
REPETITION_N = 4
REPETITION_THRESHOLD = 0.6  # share of repeated token 4-grams
MIN_NGRAMS = 8  # fewer 4-grams than this (answers under 11 tokens) say nothing about repetition
LOOP_MIN_REPEATS = 4  # a unit written 4 times in a row ...
LOOP_MIN_CHARS = 20  # ... covering at least 20 characters (3 repeats occur in real tables and letters)
LOOP_MAX_PERIOD = 64  # longest repeated unit looked for, in characters

# Tokens for repetition: each Chinese character, or a word of other letters (digits and punctuation
# are left out, so tables, separators and lists of numbers are not mistaken for loops).
_TOKEN = re.compile(f"[{CJK_CLASS}]|[^\\W\\d_{CJK_CLASS}]+")
_SPACE = re.compile(r"\s+")


def _letters(text: str) -> list[str]:
    # isalpha covers CJK ideographs, Latin, Cyrillic, kana, ...; digits, punctuation and space are out.
    return [ch for ch in text if ch.isalpha()]


def chinese_share(text: str) -> float:
    """Share of the letters in `text` that are Chinese characters; 0.0 when it has no letters
    (empty, or only digits/punctuation: such an answer is not counted as written in Chinese)."""
    letters = _letters(text)
    return sum(map(is_cjk, letters)) / len(letters) if letters else 0.0


def is_chinese_answer(text: str, threshold: float = CHINESE_THRESHOLD) -> bool:
    """True when more than `threshold` of the letters are Chinese (never for letterless text)."""
    return chinese_share(text) > threshold


def repetition(text: str, n: int = REPETITION_N) -> float:
    """Share of token n-grams that repeat an earlier n-gram (1 - distinct/total): near 0 for fresh
    text, near 1 for a loop. Tokens are Chinese characters and (case-folded) words of other letters,
    so Chinese and English are measured alike. 0.0 below `MIN_NGRAMS` n-grams."""
    tokens = _TOKEN.findall(text.lower())
    total = len(tokens) - n + 1
    if total < MIN_NGRAMS:
        return 0.0
    return 1 - len({tuple(tokens[i:i + n]) for i in range(total)}) / total


def longest_loop(text: str, max_period: int = LOOP_MAX_PERIOD) -> tuple[int, int]:
    """The longest stretch of `text` (whitespace runs collapsed) that repeats one unit containing a
    letter at least `LOOP_MIN_REPEATS` times in a row: `(characters covered, unit length)`, (0, 0)
    if none. A final, partial repetition counts, since generation is often cut off mid-loop."""
    s = _SPACE.sub(" ", text)
    best = (0, 0)
    for p in range(1, min(max_period, len(s) // LOOP_MIN_REPEATS) + 1):
        run = 0  # positions i (so far) with s[i] == s[i - p], consecutively
        for i in range(p, len(s) + 1):
            if i < len(s) and s[i] == s[i - p]:
                run += 1
                continue
            covered = run + p
            if covered >= LOOP_MIN_REPEATS * p and covered > best[0]:
                start = i - covered
                if any(ch.isalpha() for ch in s[start:start + p]):
                    best = (covered, p)
            run = 0
    return best


def is_degenerate(text: str, n: int = REPETITION_N, threshold: float = REPETITION_THRESHOLD) -> bool:
    """Degenerate repetition: `repetition(text, n) >= threshold`, or a loop (`longest_loop`) of at
    least `LOOP_MIN_CHARS` characters. A normal paragraph meets neither; "我是我是我是..." meets both."""
    return repetition(text, n) >= threshold or longest_loop(text)[0] >= LOOP_MIN_CHARS


def _lcs_length(a: str, b: str) -> int:
    """Length of the longest common subsequence, bit-parallel (Allison-Dix / Hyyrö): O(len(a))
    big-integer steps instead of an O(len(a)*len(b)) Python table."""
    if len(a) < len(b):
        a, b = b, a
    if not b:
        return 0
    masks: dict[str, int] = {}
    for i, ch in enumerate(b):
        masks[ch] = masks.get(ch, 0) | (1 << i)
    full = (1 << len(b)) - 1
    v = full
    for ch in a:
        u = v & masks.get(ch, 0)
        v = ((v + u) | (v - u)) & full
    return len(b) - bin(v).count("1")


def rouge_l_chars(pred: str, ref: str) -> float:
    """ROUGE-L F1 on characters, whitespace ignored (Chinese has no words to split on).
    1.0 when both are empty, 0.0 when only one is."""
    p, r = _SPACE.sub("", pred), _SPACE.sub("", ref)
    if not p or not r:
        return float(p == r)
    lcs = _lcs_length(p, r)
    return 0.0 if lcs == 0 else 2 * lcs / (len(p) + len(r))  # F1 of precision lcs/|p| and recall lcs/|r|


def exact_match(pred: str, ref: str) -> bool:
    return pred.strip() == ref.strip()


def answer_metrics(answer: str, stopped_at_eos: bool, reference: Optional[str] = None,
                   threshold: float = CHINESE_THRESHOLD) -> dict[str, Any]:
    """The metrics of one answer; `exact_match` and `rouge_l` only when there is a reference."""
    share = chinese_share(answer)
    out: dict[str, Any] = {
        "length": len(answer.strip()),
        "chinese_share": share,
        "chinese_answer": share > threshold,
        "empty": not answer.strip(),
        "repetition": repetition(answer),
        "degenerate": is_degenerate(answer),
        "eos": bool(stopped_at_eos),
    }
    if reference is not None:
        out["exact_match"] = exact_match(answer, reference)
        out["rouge_l"] = rouge_l_chars(answer, reference)
    return out


def _summary(metrics: list[dict[str, Any]]) -> dict[str, Any]:
    n = len(metrics)

    def mean(key: str, of: list[dict[str, Any]]) -> float:
        return sum(float(m[key]) for m in of) / len(of)

    out: dict[str, Any] = {
        "n": n,
        "chinese_answer_rate": mean("chinese_answer", metrics),
        "mean_chinese_share": mean("chinese_share", metrics),
        "empty_rate": mean("empty", metrics),
        "degenerate_rate": mean("degenerate", metrics),
        "mean_length": mean("length", metrics),
        "eos_rate": mean("eos", metrics),
    }
    with_ref = [m for m in metrics if "rouge_l" in m]
    if with_ref:  # averaged over the answers that have a reference only
        out["n_with_reference"] = len(with_ref)
        out["exact_match"] = mean("exact_match", with_ref)
        out["rouge_l"] = mean("rouge_l", with_ref)
    return out


def aggregate(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Summaries per model, overall and per class, of answers.jsonl rows (`model`, `class`,
    `metrics` keys). Returns `{"classes": [...], "models": {name: {"overall": S, "by_class":
    {class: S}}}}`; models in order of first appearance, AtomBulb's classes first in their order."""
    groups: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for row in rows:
        groups.setdefault(row["model"], {}).setdefault(row["class"], []).append(row["metrics"])
    seen = Counter(row["class"] for row in rows)
    classes = [c for c in CLASSES if c in seen] + [c for c in seen if c not in CLASSES]
    models = {}
    for model, by_class in groups.items():
        every = [m for c in classes for m in by_class.get(c, [])]
        models[model] = {"overall": _summary(every),
                         "by_class": {c: _summary(by_class[c]) for c in classes if c in by_class}}
    return {"classes": classes, "models": models}
