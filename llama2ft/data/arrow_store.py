"""Tokenized splits on disk: Arrow stream files written a record batch at a time and memory-mapped by
`datasets` (`Dataset.from_file`) in the Trainer and in every rank, so memory does not grow with the
number of rows. Packing groups samples a bounded window at a time, straight from the encoder."""
from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pyarrow as pa

from llama2ft.data.encode import Sample
from llama2ft.data.packing import pack_bins
from llama2ft.data.templates import IGNORE_INDEX

_IDS = pa.list_(pa.int32())
UNPACKED = pa.schema([("input_ids", _IDS), ("labels", _IDS), ("length", pa.int32())])  # length: for group_by_length
PACKED = pa.schema([("input_ids", _IDS), ("labels", _IDS), ("seq_lens", _IDS)])  # seq_lens: samples in the row
WRITE_ROWS = 1000  # rows per record batch
PACK_WINDOW_TOKENS = 1 << 23  # samples packed together (8M tokens: 64 MB of int32 ids and labels)


class SplitWriter:
    """Appends rows to one Arrow stream file."""

    def __init__(self, path: Path, packed: bool):
        self.path, self.schema = path, PACKED if packed else UNPACKED
        self.rows = 0
        self._writer = pa.ipc.new_stream(str(path), self.schema)
        self._buffer: dict[str, list] = {name: [] for name in self.schema.names}

    def add(self, input_ids: Any, labels: Any, seq_lens: Optional[list[int]] = None) -> None:
        self._buffer["input_ids"].append(input_ids)
        self._buffer["labels"].append(labels)
        if seq_lens is None:
            self._buffer["length"].append(len(input_ids))
        else:
            self._buffer["seq_lens"].append(seq_lens)
        if len(self._buffer["input_ids"]) >= WRITE_ROWS:
            self._flush()

    def _flush(self) -> None:
        n = len(self._buffer["input_ids"])
        if n:
            arrays = [_list_array(self._buffer[f.name]) if f.type == _IDS else pa.array(self._buffer[f.name], f.type)
                      for f in self.schema]
            self._writer.write_batch(pa.RecordBatch.from_arrays(arrays, schema=self.schema))
            self.rows += n
            self._buffer = {name: [] for name in self.schema.names}

    def close(self) -> int:
        self._flush()
        self._writer.close()
        return self.rows


def _list_array(rows: list) -> pa.Array:
    """An int32 list array of rows (Python lists or numpy arrays), built through one flat numpy array."""
    lengths = np.fromiter(map(len, rows), dtype=np.int32, count=len(rows))
    offsets = np.zeros(len(rows) + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    values = np.fromiter(itertools.chain.from_iterable(rows), dtype=np.int32, count=int(offsets[-1]))
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(values))


class Packer:
    """Packs samples into rows of at most `capacity` tokens: best-fit decreasing within each window of
    samples (the whole data set when it is small), rows written in the order `pack_bins` gives."""

    def __init__(self, writer: SplitWriter, capacity: int, window_tokens: int = PACK_WINDOW_TOKENS):
        self.writer, self.capacity, self.window_tokens = writer, capacity, window_tokens
        self._ids: list[np.ndarray] = []
        self._labels: list[np.ndarray] = []
        self._tokens = 0

    def add(self, sample: Sample) -> None:
        self._ids.append(np.asarray(sample.input_ids, dtype=np.int32))
        self._labels.append(np.asarray(sample.labels, dtype=np.int32))
        self._tokens += len(sample.input_ids)
        if self._tokens >= self.window_tokens:
            self.flush()

    def flush(self) -> None:
        for group in pack_bins([len(x) for x in self._ids], self.capacity):
            members = sorted(group)  # keep the data's order inside a row
            labels = [self._labels[i].copy() for i in members]
            for lab in labels:
                lab[0] = IGNORE_INDEX  # no sample learns to predict the next one's first token
            self.writer.add(np.concatenate([self._ids[i] for i in members]), np.concatenate(labels),
                            [len(self._ids[i]) for i in members])
        self._ids, self._labels, self._tokens = [], [], 0


def load_split(path: Path) -> Any:
    """A memory-mapped `datasets.Dataset` of one split file."""
    from datasets import Dataset

    return Dataset.from_file(str(path))
