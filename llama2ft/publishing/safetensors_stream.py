"""Streaming safetensors I/O for llama2ft-merge/export: headers, tensors or rows of them, shards.

Plain reads/writes instead of mmap: file pages touched through an mmap count in the process's RSS,
so reading a whole shard that way would hold the shard in memory. Memory is reused (`TensorReader`,
`Scratch`): fresh memory for every tensor or block costs a page fault per page, and on a VM that was
more than the merge's arithmetic. A shard is written in pieces by several threads (`write_shard`), each
piece a block of rows made in cache-sized buffers and written at its offset, or bytes that go out
unchanged, copied file to file by the kernel (`copy_file_range`) without passing through Python.
"""
from __future__ import annotations

import json
import math
import os
import threading
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

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
    fd = os.open(info.file, os.O_RDONLY)
    try:
        _pread_into(fd, memoryview(raw.numpy()), info.start, info)
    finally:
        os.close(fd)
    return raw.view(dtype).reshape(info.shape)


def _pread_into(fd: int, view: memoryview, pos: int, info: TensorInfo) -> None:
    """Fill `view` from byte `pos` of `fd` (part of `info`'s tensor)."""
    done = 0
    while done < len(view):
        got = os.preadv(fd, [view[done:]], pos + done)
        if not got:
            raise _cut_off(info)
        done += got


def _cut_off(info: TensorInfo) -> UserError:
    return UserError(f"{info.file} ends before the tensor at bytes {info.start}-{info.end} (a cut-off file?)")


class TensorReader:
    """Reads whole tensors one at a time into one reused buffer (grown to the largest tensor read): a
    tensor it returns is valid until the next read."""

    def __init__(self) -> None:
        self.buffer: Any = None

    def read(self, info: TensorInfo) -> Any:
        import torch

        n = info.end - info.start
        if self.buffer is None or self.buffer.numel() < n:
            self.buffer = None  # freed before the larger one is made
            self.buffer = torch.empty(max(1, n), dtype=torch.uint8)
        return read_tensor(info, self.buffer)


def rows_of(info: TensorInfo) -> tuple[int, int]:
    """(rows, elements per row) of a tensor: its first dimension and the rest (a scalar is one row)."""
    return (info.shape[0], math.prod(info.shape[1:])) if info.shape else (1, 1)


class Scratch:
    """One writer thread's reused buffers, by role, and its open files (an open() per block would be a
    system call per block)."""

    def __init__(self) -> None:
        self.buffers: dict[str, Any] = {}
        self.files: dict[Path, int] = {}

    def buffer(self, role: str, shape: tuple[int, ...], dtype: Any) -> Any:
        """An uninitialised tensor of `shape` and `dtype` in this role's buffer (valid until the role's next call)."""
        import torch

        n = math.prod(shape) * dtype.itemsize
        buf = self.buffers.get(role)
        if buf is None or buf.numel() < n:
            self.buffers[role] = None
            buf = self.buffers[role] = torch.empty(max(1, n), dtype=torch.uint8)
        return buf[:n].view(dtype).view(shape)

    def fd(self, path: Path) -> int:
        if path not in self.files:
            self.files[path] = os.open(path, os.O_RDONLY)
        return self.files[path]

    def read_rows(self, info: TensorInfo, lo: int, hi: int) -> Any:
        """Rows [lo, hi) of a stored tensor, read into the "read" buffer."""
        import torch

        dtype = getattr(torch, info.dtype)
        row_bytes = rows_of(info)[1] * dtype.itemsize
        out = self.buffer("read", (hi - lo, *info.shape[1:]) if info.shape else (), dtype)
        _pread_into(self.fd(info.file), memoryview(out.reshape(-1).view(torch.uint8).numpy()),
                    info.start + lo * row_bytes, info)
        return out

    def close(self) -> None:
        for fd in self.files.values():
            os.close(fd)
        self.files.clear()


@dataclass
class Piece:
    """Bytes of one output tensor from byte `offset` of its data on: copied unchanged from `source` (a
    byte range of a stored file), or the tensor `make(scratch)` returns, made in that thread's buffers."""

    key: str
    offset: int
    source: Optional[TensorInfo] = None
    make: Optional[Callable[[Scratch], Any]] = None


def copy_pieces(key: str, info: TensorInfo, size: int = 16 << 20) -> Iterable[Piece]:
    """A stored tensor that goes out unchanged, as pieces of `size` bytes (several threads share a large one)."""
    for lo in range(0, info.end - info.start, size):
        hi = min(info.end - info.start, lo + size)
        yield Piece(key, lo, source=TensorInfo(info.dtype, [], info.file, info.start + lo, info.start + hi))


def write_shard(path: Path, specs: dict[str, tuple[str, list[int], int]], pieces: Iterable[Piece],
                workers: int) -> None:
    """A safetensors file from (dtype, shape, nbytes) specs, its data written by `workers` threads, each
    taking the next of `pieces` and writing it at its place; every byte of every tensor must be covered."""
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offsets, offset = {}, 0
    for key, (dtype, shape, nbytes) in specs.items():
        header[key] = {"dtype": _ST_NAMES[dtype], "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offsets[key] = offset
        offset += nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the data section starts 8-byte aligned
    raw = len(raw).to_bytes(8, "little") + raw
    out = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    # Writes to one file take its inode lock in turn, and a thread waiting for that lock spins on a CPU
    # (a fifth of a merge's CPU time on 2 vCPUs, more when the disk is slow); waiting on our own lock
    # sleeps instead.
    lock = threading.Lock()
    try:
        _pwrite(out, memoryview(raw), 0)
        written = run_pieces(pieces, workers, lambda piece, scratch: _write_piece(
            piece, scratch, out, len(raw) + offsets[piece.key], lock))
    finally:
        os.close(out)
    wrong = [f"{k}: {written[k]} bytes, planned {n}" for k, (_, _, n) in specs.items() if written[k] != n]
    if wrong or set(written) - set(specs):
        raise RuntimeError(f"{path.name}: " + "; ".join(wrong or ["a piece of a tensor not in the shard"]))


def run_pieces(pieces: Iterable[Piece], workers: int, write: Callable[[Piece, Scratch], int]) -> Counter:
    """`write` each piece in one of `workers` threads, each with its own `Scratch`; returns the bytes
    written per tensor. The first error stops the others (after their current piece) and is raised."""
    import torch

    it, lock, failed, threads = iter(pieces), threading.Lock(), threading.Event(), torch.get_num_threads()

    def worker() -> Counter:
        # the parallelism is across pieces; torch's own threads inside each would compete with them
        torch.set_num_threads(1)
        scratch, done = Scratch(), Counter()
        try:
            while not failed.is_set():
                with lock:
                    piece = next(it, None)
                if piece is None:
                    break
                done[piece.key] += write(piece, scratch)
        except BaseException:
            failed.set()
            raise
        finally:
            scratch.close()
        return done

    from concurrent.futures import ThreadPoolExecutor

    try:
        with ThreadPoolExecutor(max(1, workers)) as pool:
            futures = [pool.submit(worker) for _ in range(max(1, workers))]
        return sum((f.result() for f in futures), Counter())
    finally:
        torch.set_num_threads(threads)


def _write_piece(piece: Piece, scratch: Scratch, out: int, start: int, lock: threading.Lock) -> int:
    """One piece written at byte `start + piece.offset` of the file `out`, holding `lock` while it
    writes (not while it makes the piece); returns its size."""
    import torch

    pos = start + piece.offset
    if piece.source is not None:
        with lock:
            return _copy_range(piece.source, scratch.fd(piece.source.file), out, pos)
    data = memoryview(piece.make(scratch).contiguous().reshape(-1).view(torch.uint8).numpy())
    with lock:
        return _pwrite(out, data, pos)


def _pwrite(fd: int, data: memoryview, pos: int) -> int:
    n = len(data)
    while data:
        got = os.pwrite(fd, data, pos)
        data, pos = data[got:], pos + got
    return n


def _copy_range(info: TensorInfo, src: int, out: int, pos: int) -> int:
    """Bytes info.start..info.end of `src` to byte `pos` of `out`, copied by the kernel."""
    n, done = info.end - info.start, 0
    try:
        while done < n:
            got = os.copy_file_range(src, out, n - done, info.start + done, pos + done)
            if not got:
                break
            done += got
    except OSError:  # no in-kernel copy between these files: copy through memory
        pass
    while done < n:
        chunk = os.pread(src, min(n - done, 1 << 24), info.start + done)
        if not chunk:
            raise _cut_off(info)
        done += _pwrite(out, memoryview(chunk), pos + done)
    return n


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
