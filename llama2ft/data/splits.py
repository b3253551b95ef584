"""What a data file's rows are (a `RowKind`) and how one split of them is written: dialogues (SFT), here;
preference pairs and KTO completions in `pair_encode`. The data pipeline (`pipeline.prepare_data`)
reads, checks, holds out, mixes and caches every kind the same way; a kind says how its rows are read
and how a split of them is encoded into an Arrow file."""
from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Optional

from llama2ft.core.errors import DataError
from llama2ft.core.files import kill_point
from llama2ft.data.arrow_store import Packer, SplitWriter
from llama2ft.data.dialogue import Turn, format_dialogue, parse_dialogue
from llama2ft.data.encode import BATCH_ROWS, EncodeOptions, finish_batch, new_stats, render_batch, summary_line
from llama2ft.data.sources import Item, iter_items
from llama2ft.data.templates import Template, tokenize

EXAMPLES_KEPT = 1000  # held-out examples kept as text, for the greedy answers before/after training
PREVIEW_KEPT = 100  # samples of each split kept for preview.jsonl (data.preview_rows shows up to this many)


class RowKind:
    """The rows of the data files of one training method: how they are read and encoded. Subclasses
    set `name` and implement each method."""

    name = ""

    def items(self, path: str, data: Any, check: bool = True) -> Iterator[Item]:
        """Every row of a file as an Item (`check=False`: a second pass over a checked file)."""
        raise NotImplementedError

    def new_stats(self, skipped: int) -> dict:
        raise NotImplementedError

    def split(self, path: Path, stats: dict, data: Any, template: Template, tokenizer: Any,
              pool: ThreadPoolExecutor, keep_examples: bool) -> Any:
        """A writer of one split: `add(row, value, canonical, file)`, `close()`, and its `stats`,
        `preview` ((file, row), ids, labels, extra) and `examples` (held-out examples as text)."""
        raise NotImplementedError

    def example_json(self, example: Any) -> dict:
        raise NotImplementedError

    def example_from_json(self, obj: dict) -> Any:
        raise NotImplementedError

    def check_split(self, stats: dict, files: str) -> None:
        """Raise DataError when an encoded training split cannot be trained on."""

    def summary(self, stats: dict) -> str:
        """One line about the prepared data (its data_stats.json)."""
        raise NotImplementedError


class DialogueRows(RowKind):
    """Community-format cells or dialogues of other shapes (ShareGPT, OpenAI, Alpaca), or raw texts."""

    name = "dialogues"

    def items(self, path: str, data: Any, check: bool = True) -> Iterator[Item]:
        return iter_items(path, data, check)

    def new_stats(self, skipped: int) -> dict:
        return new_stats(skipped)

    def split(self, path: Path, stats: dict, data: Any, template: Template, tokenizer: Any,
              pool: ThreadPoolExecutor, keep_examples: bool) -> "DialogueSplit":
        options = EncodeOptions(data.max_seq_len, data.train_on_inputs, data.format == "raw")
        return DialogueSplit(path, stats, data, template, tokenizer, options, pool, keep_examples)

    def example_json(self, example: list[Turn]) -> dict:
        return {"dialogue": format_dialogue(example)}

    def example_from_json(self, obj: dict) -> list[Turn]:
        return parse_dialogue(obj["dialogue"])

    def summary(self, stats: dict) -> str:
        return summary_line(stats)

    def check_split(self, stats: dict, files: str) -> None:
        if not stats["rows"]:
            raise DataError(f"{files}: no row has a trained token left after truncation to data.max_seq_len")


DIALOGUES = DialogueRows()


class DialogueSplit:
    """One split being encoded. The fast tokenizer works on one batch (in its own threads, without the
    GIL) while Python finishes the batch before it: on 2 cores that hides most of the Python time."""

    def __init__(self, path: Path, stats: dict, data: Any, template: Template, tokenizer: Any,
                 options: EncodeOptions, pool: ThreadPoolExecutor, keep_examples: bool = False):
        self.stats, self.keep_examples = stats, keep_examples and not options.raw
        self.template, self.tokenizer, self.options, self.pool = template, tokenizer, options, pool
        self.writer = SplitWriter(path, packed=bool(data.packing))
        self.packer = Packer(self.writer, data.max_seq_len) if data.packing else None
        self.capacity = data.max_seq_len
        self.batch: list[tuple[int, Any]] = []  # (place in the batch, cell or dialogue)
        self.where: list[tuple[str, int]] = []  # (file, row) of each row of the batch
        self.canonical: list[bool] = []
        self.pending: Optional[tuple[list, list, list, Future]] = None
        self.preview: list[tuple[tuple[str, int], list[int], list[int], dict]] = []
        self.examples: list[list[Turn]] = []

    def add(self, row: int, value: Any, canonical: bool, path: str) -> None:
        """One row: a checked cell or a Dialogue (see `sources.iter_items`)."""
        self.batch.append((len(self.batch), value))
        self.where.append((path, row))
        self.canonical.append(canonical)
        if self.keep_examples and len(self.examples) < EXAMPLES_KEPT:
            self.examples.append(parse_dialogue(value) if isinstance(value, str) else list(value))
        if len(self.batch) >= BATCH_ROWS:
            self._submit()

    def _submit(self) -> None:
        rendered = render_batch(self.batch, self.template, self.tokenizer, self.options, self.stats, self.canonical)
        future = self.pool.submit(tokenize, self.tokenizer, [r.text for r in rendered])
        self._finish()
        self.pending = (self.batch, self.where, rendered, future)
        self.batch, self.where, self.canonical = [], [], []

    def _finish(self) -> None:
        if self.pending is None:
            return
        items, where, rendered, future = self.pending
        self.pending = None
        batch = finish_batch(items, rendered, future.result(), self.template, self.tokenizer, self.options,
                             self.stats)
        for i in range(min(len(batch), PREVIEW_KEPT - len(self.preview))):
            ids, labels = batch.sample(i)
            self.preview.append((where[batch.rows[i]], ids.tolist(), labels.tolist(), {}))
        (self.packer or self.writer).add_batch(batch)
        kill_point("data-batch")

    def close(self) -> None:
        if self.batch:
            self._submit()
        self._finish()
        if self.packer is not None:
            self.packer.flush()
        rows = self.writer.close()
        if self.packer is not None:
            self.stats["packed_rows"] = rows
            self.stats["packing_fill"] = round(self.stats["tokens"] / max(1, rows * self.capacity), 4)


def write_examples(path: Path, kind: RowKind, examples: list) -> None:
    with path.open("w", encoding="utf-8") as f:
        for example in examples:
            f.write(json.dumps(kind.example_json(example), ensure_ascii=False) + "\n")


def read_examples(path: Path, kind: RowKind) -> list:
    if not path.is_file():
        return []
    with path.open(encoding="utf-8") as f:
        return [kind.example_from_json(json.loads(line)) for line in f]
