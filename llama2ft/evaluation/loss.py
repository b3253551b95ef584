"""`llama2ft-eval task=loss`: loss and perplexity on a community-format csv, masked as in training.

The rows go through the training data step itself (`data.encode.encode_rows`, `PadCollator`), so the
tokens scored here are exactly the tokens a training run learns from.
"""
from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any, Optional, Union

import torch
import torch.nn.functional as F

from llama2ft.core.errors import DataError
from llama2ft.data.collators import PadCollator
from llama2ft.data.csv_reader import read_column
from llama2ft.data.dialogue import DialogueFormatError, Turn, parse_dialogue, parse_rows
from llama2ft.data.encode import encode_rows
from llama2ft.data.rows import Rows
from llama2ft.data.templates import IGNORE_INDEX, Template

Dialogues = Union[str, os.PathLike, Rows, Sequence[Union[str, Sequence[Turn]]]]


def load_dialogues(rows_or_path: Dialogues, text_column: str = "text", encoding: Optional[str] = None) -> Rows:
    """A csv path (community format in `text_column`), parsed `Rows`, or dialogues given as
    lists of Turns or as community-format strings; every bad row raises DataError."""
    if isinstance(rows_or_path, Rows):
        return rows_or_path
    if isinstance(rows_or_path, (str, os.PathLike)):
        path = os.fspath(rows_or_path)
        parsed, _ = parse_rows(read_column(path, text_column, encoding), path, skip_bad_rows=False)
        return Rows(path, parsed)
    items = []
    for n, d in enumerate(rows_or_path, 1):
        if isinstance(d, str):
            try:
                d = parse_dialogue(d)
            except DialogueFormatError as exc:
                raise DataError(f"dialogue {n}: {exc}") from None
        items.append((n, list(d)))
    return Rows("<dialogues>", items)


@torch.no_grad()
def loss_on_csv(model: Any, tokenizer: Any, template: Template, rows_or_path: Dialogues, max_seq_len: int,
                batch_size: int = 8) -> dict[str, float]:
    """Mean loss per trained (answer) token over all rows, and its perplexity.

    The mean is the sum of per-token losses over the number of trained tokens, so long answers
    weigh by their length and the result does not depend on `batch_size` (unlike a mean of batch
    means). Rows are truncated to `max_seq_len` as in training; rows left without an answer token
    are skipped. Returns `{"loss", "perplexity", "tokens", "rows"}`.
    """
    rows = load_dialogues(rows_or_path)
    columns, stats = encode_rows(rows, template, tokenizer, max_seq_len=max_seq_len)
    if not columns["input_ids"]:
        raise DataError(f"{rows.path}: no row has an answer token within max_seq_len={max_seq_len}")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    collator = PadCollator(pad)
    features = [{"input_ids": i, "labels": lab} for i, lab in zip(columns["input_ids"], columns["labels"])]
    features.sort(key=lambda f: len(f["input_ids"]))  # less padding; the sum does not depend on order

    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    total, count = 0.0, 0
    try:
        for start in range(0, len(features), batch_size):
            batch = collator(features[start:start + batch_size])
            logits = model(input_ids=batch["input_ids"].to(device),
                           attention_mask=batch["attention_mask"].to(device)).logits
            # Token t is predicted from the tokens before it, as in the causal-LM training loss.
            targets = batch["labels"][:, 1:].to(device)
            total += F.cross_entropy(logits[:, :-1].float().reshape(-1, logits.shape[-1]), targets.reshape(-1),
                                     ignore_index=IGNORE_INDEX, reduction="sum").item()
            count += int((targets != IGNORE_INDEX).sum())
    finally:
        model.train(was_training)
    loss = total / count
    perplexity = math.exp(loss) if loss < 700 else math.inf  # exp overflows a float beyond ~709
    return {"loss": loss, "perplexity": perplexity, "tokens": count, "rows": stats["rows"]}
