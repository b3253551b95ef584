"""Streaming safetensors I/O for llama2ft-merge/export: headers, one tensor at a time, shards.

Plain reads/writes instead of mmap: file pages touched through an mmap count in the process's RSS,
so reading a whole shard that way would hold the shard in memory; here only one tensor is live.
Tensors are read into one reused buffer (`TensorReader`): fresh memory for every tensor costs a page
fault per page, and on a VM that was more than the merge's arithmetic. A tensor that goes out unchanged
is copied file to file by the kernel (`copy_file_range`), without passing through Python at all.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional

from llama2ft.core.errors import UserError

_ST_DTYPES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16", "I64": "int64",
              "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool"}
_ST_NAMES = {v: k for k, v in _ST_DTYPES.items()}


@dataclass
class TensorInfo:
    """Where one tensor's bytes lie in a safetensors file (or, file=None, that an adapter supplies it)."""

    dtype: str  # torch name, e.g. "float16"
    shape: list[int]
    file: Optional[Path]  # None: comes from an adapter only
    start: int
    end: int


def read_header(path: Path) -> dict[str, TensorInfo]:
    """The tensors of one safetensors file, from its header only."""
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(n))
    header.pop("__metadata__", None)
    base = 8 + n
    return {k: TensorInfo(_ST_DTYPES[v["dtype"]], v["shape"], path, base + v["data_offsets"][0],
                          base + v["data_offsets"][1]) for k, v in header.items()}


def read_tensor(info: TensorInfo, buffer: Optional[Any] = None) -> Any:
    """One tensor as a writable torch tensor (a plain read, no mmap): fresh, or a view of `buffer`
    (a uint8 torch tensor of at least its size, e.g. `TensorReader`'s)."""
    import torch

    dtype = getattr(torch, info.dtype)
    n = info.end - info.start
    if not n:
        return torch.empty(info.shape, dtype=dtype)
    raw = torch.empty(n, dtype=torch.uint8) if buffer is None else buffer[:n]
    view = memoryview(raw.numpy())
    with open(info.file, "rb", buffering=0) as f:
        f.seek(info.start)
        done = 0
        while done < n:
            got = f.readinto(view[done:])
            if not got:
                raise UserError(f"{info.file} ends before the tensor at bytes {info.start}-{info.end} (a cut-off file?)")
            done += got
    return raw.view(dtype).reshape(info.shape)


class TensorReader:
    """Reads tensors one at a time into reused buffers (grown to the largest tensor read), taking
    turns between two, so that the tensor read before the last is the only one overwritten: a
    tensor it returns stays valid while the next one is read and worked on (`write_shard` writes it
    meanwhile)."""

    def __init__(self) -> None:
        self.slots: list[Any] = [None, None]
        self.turn = 0

    def read(self, info: TensorInfo) -> Any:
        import torch

        n, slot = info.end - info.start, self.turn
        self.turn = 1 - self.turn
        if self.slots[slot] is None or self.slots[slot].numel() < n:
            self.slots[slot] = None  # freed before the larger one is made
            self.slots[slot] = torch.empty(max(1, n), dtype=torch.uint8)
        return read_tensor(info, self.slots[slot])


def copy_range(info: TensorInfo, out: Any) -> None:
    """The tensor's bytes appended to the open file `out` (unbuffered), copied by the kernel."""
    import os

    n, done = info.end - info.start, 0
    with open(info.file, "rb", buffering=0) as src:
        try:
            while done < n:
                got = os.copy_file_range(src.fileno(), out.fileno(), n - done, info.start + done)
                if not got:
                    break
                done += got
        except OSError:  # no in-kernel copy between these files: copy through memory
            pass
        if done < n:
            src.seek(info.start + done)
            while done < n:
                chunk = src.read(min(n - done, 1 << 24))
                if not chunk:
                    raise UserError(f"{info.file} ends before the tensor at bytes {info.start}-{info.end}")
                out.write(chunk)
                done += len(chunk)


def write_shard(path: Path, specs: dict[str, tuple[str, list[int], int]], tensors: Iterator[Any]) -> None:
    """A safetensors file from (dtype, shape, nbytes) specs, streaming `tensors` (same order) into it;
    an item that is a `TensorInfo` is copied unchanged from its file. Each item is written by a
    second thread while the next one is made (file writes and torch release the GIL): at most one
    item is being written when `tensors` is asked for the next."""
    from concurrent.futures import ThreadPoolExecutor

    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for key, (dtype, shape, nbytes) in specs.items():
        header[key] = {"dtype": _ST_NAMES[dtype], "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the data section starts 8-byte aligned
    with open(path, "wb", buffering=0) as f, ThreadPoolExecutor(1) as writer:  # unbuffered: see copy_range
        f.write(len(raw).to_bytes(8, "little") + raw)
        pending = None
        # not zip(): zip keeps its last result tuple (and so the previous tensor) alive
        for key, (_, _, nbytes) in specs.items():
            item = next(tensors)  # made while the previous item is written
            size = item.end - item.start if isinstance(item, TensorInfo) else item.numel() * item.element_size()
            if size != nbytes:
                raise RuntimeError(f"{key}: {size} bytes, planned {nbytes}")
            if pending is not None:
                pending.result()
            pending = writer.submit(_write_item, item, f)
            del item  # the writer holds it until written
        if pending is not None:
            pending.result()


def _write_item(item: Any, f: Any) -> None:
    import torch

    if isinstance(item, TensorInfo):
        copy_range(item, f)
        return
    data = memoryview(item.reshape(-1).view(torch.uint8).numpy())
    while data:
        data = data[f.write(data):]


def parse_size(text: str) -> int:
    """Bytes in "2GB", "500MB", "10KB" or a plain integer (decimal units, like transformers)."""
    units = {"KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}
    t = text.strip().upper()
    for unit, factor in sorted(units.items(), key=lambda u: -len(u[0])):
        if t.endswith(unit) and t[: -len(unit)].strip().replace(".", "", 1).isdigit():
            return int(float(t[: -len(unit)]) * factor)
    if t.isdigit() and int(t) > 0:
        return int(t)
    raise ValueError(f"{text!r} is not a size like 2GB or 500MB")


def plan_shards(items: list[tuple[str, tuple[str, list[int], int]]], max_bytes: int) -> list[list[str]]:
    """Keys grouped into shards of at most `max_bytes` (a bigger tensor gets a shard of its own)."""
    shards: list[list[str]] = [[]]
    size = 0
    for key, (_, _, nbytes) in items:
        if shards[-1] and size + nbytes > max_bytes:
            shards.append([])
            size = 0
        shards[-1].append(key)
        size += nbytes
    return shards


def shard_names(n: int) -> list[str]:
    """transformers' file names for `n` shards."""
    return ["model.safetensors"] if n == 1 else [f"model-{i:05d}-of-{n:05d}.safetensors" for i in range(1, n + 1)]


def base_tensors(base: Path) -> dict[str, TensorInfo]:
    """Every tensor of the base's safetensors (headers only), or a UserError saying what to do."""
    if not base.is_dir():
        raise UserError(f"base model folder {base} does not exist (a hub id must be in the local cache or "
                        "downloaded first: huggingface-cli download ID --local-dir DIR)")
    files = sorted(base.glob("*.safetensors"))
    index = base / "model.safetensors.index.json"
    if index.is_file():
        files = [base / f for f in dict.fromkeys(json.loads(index.read_text())["weight_map"].values())]
    if not files:
        bins = sorted(p.name for p in base.glob("*.bin"))
        hint = f" (it has {', '.join(bins[:3])}: convert it with from_pretrained + save_pretrained)" if bins else ""
        raise UserError(f"{base} has no .safetensors weights{hint}; the streaming merge reads safetensors only")
    tensors: dict[str, TensorInfo] = {}
    for f in files:
        tensors.update(read_header(f))
    return tensors


def tensor_nbytes(info: TensorInfo, esize: int) -> int:
    """Bytes of `info`'s shape at `esize` bytes per element."""
    n = 1
    for d in info.shape:
        n *= d
    return n * esize
