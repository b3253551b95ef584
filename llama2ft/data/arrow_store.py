"""Tokenized splits on disk: Arrow stream files written a record batch at a time and memory-mapped by
`datasets` (`Dataset.from_file`) in the Trainer and in every rank, so memory does not grow with the
number of rows. Packing groups samples a bounded window at a time, straight from the encoder; every
write goes from flat numpy arrays to Arrow without per-token Python objects."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from llama2ft.data.encode import EncodedBatch
from llama2ft.data.packing import pack_bins
from llama2ft.data.templates import IGNORE_INDEX

_IDS = pa.list_(pa.int32())
UNPACKED = pa.schema([("input_ids", _IDS), ("labels", _IDS), ("length", pa.int32())])  # length: for group_by_length
PACKED = pa.schema([("input_ids", _IDS), ("labels", _IDS), ("seq_lens", _IDS)])  # seq_lens: samples in the row
PACK_WINDOW_TOKENS = 1 << 23  # samples packed together (8M tokens: 64 MB of int32 ids and labels)


def _lists(values: np.ndarray, offsets: np.ndarray) -> pa.Array:
    return pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), pa.array(values.astype(np.int32, copy=False)))


class SplitWriter:
    """Appends rows to one Arrow stream file."""

    def __init__(self, path: Path, packed: bool):
        self.path, self.schema = path, PACKED if packed else UNPACKED
        self.rows = 0
        self._writer = pa.ipc.new_stream(str(path), self.schema)

    def write(self, ids: np.ndarray, labels: np.ndarray, offsets: np.ndarray, third: pa.Array) -> None:
        """Rows whose tokens are ids[offsets[i]:offsets[i + 1]] (labels alike); `third`: the length or
        seq_lens column."""
        if len(offsets) > 1:
            arrays = [_lists(ids, offsets), _lists(labels, offsets), third]
            self._writer.write_batch(pa.RecordBatch.from_arrays(arrays, schema=self.schema))
            self.rows += len(offsets) - 1

    def add_batch(self, batch: EncodedBatch) -> None:
        """An encoded batch as one record batch (unpacked files)."""
        self.write(batch.ids, batch.labels, batch.offsets, pa.array(np.diff(batch.offsets).astype(np.int32)))

    def close(self) -> int:
        self._writer.close()
        return self.rows


class Packer:
    """Packs samples into rows of at most `capacity` tokens: best-fit decreasing within each window of
    samples (the whole data set when it is small), rows written in the order `pack_bins` gives."""

    def __init__(self, writer: SplitWriter, capacity: int, window_tokens: int = PACK_WINDOW_TOKENS):
        self.writer, self.capacity, self.window_tokens = writer, capacity, window_tokens
        self._ids: list[np.ndarray] = []
        self._labels: list[np.ndarray] = []
        self._tokens = 0

    def add_batch(self, batch: EncodedBatch) -> None:
        for i in range(len(batch)):
            ids, labels = batch.sample(i)
            self._ids.append(ids)
            self._labels.append(labels)
            self._tokens += len(ids)
        if self._tokens >= self.window_tokens:
            self.flush()

    def flush(self) -> None:
        if not self._ids:
            return
        bins = [sorted(group) for group in pack_bins([len(x) for x in self._ids], self.capacity)]  # data order in a row
        order = [i for group in bins for i in group]
        sample_lengths = np.array([len(self._ids[i]) for i in order], dtype=np.int64)
        ids = np.concatenate([self._ids[i] for i in order])
        labels = np.concatenate([self._labels[i] for i in order])  # a new array: safe to change
        labels[np.cumsum(sample_lengths) - sample_lengths] = IGNORE_INDEX  # no sample learns the next one's first token
        per_row = np.array([len(group) for group in bins], dtype=np.int64)
        sample_offsets = np.concatenate([[0], np.cumsum(per_row)])
        row_offsets = np.concatenate([[0], np.cumsum(sample_lengths)])[sample_offsets]
        self.writer.write(ids, labels, row_offsets, _lists(sample_lengths, sample_offsets))
        self._ids, self._labels, self._tokens = [], [], 0


def load_split(path: Path) -> Any:
    """A memory-mapped `datasets.Dataset` of one split file."""
    from datasets import Dataset

    return Dataset.from_file(str(path))
