"""The merge's shard writer: several threads write blocks of rows and kernel-copied byte ranges at their
places; the result is byte for byte what one thread writes and what folding each whole tensor gives."""
from __future__ import annotations

import json
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from llama2ft.core.errors import UserError
from llama2ft.publishing import merge as merge_lib
from llama2ft.publishing import safetensors_stream as stream
from llama2ft.publishing.merge import Adapter, check_fits, merged_rows, write_weights
from llama2ft.publishing.safetensors_stream import Piece, Scratch, base_tensors, write_shard

WIDTH = 96
ROWS = 3 * (merge_lib._BLOCK // WIDTH) + 5  # three full blocks of rows and a shorter last one


def base_model(path: Path) -> Path:
    """Two shards: float16 and bfloat16 weights, a norm, and a weight larger than one copied piece."""
    torch.manual_seed(0)
    path.mkdir()
    first = {"model.embed_tokens.weight": torch.randn(300, WIDTH).half(),
             "model.layers.0.mlp.gate_proj.weight": torch.randn(8800, 1024).half(),  # 18 MB: two copy pieces
             "model.norm.weight": torch.rand(WIDTH).half(),
             "model.layers.0.mlp.up_proj.weight": (torch.randn(ROWS, WIDTH) * 0.02).half(),
             "model.layers.0.self_attn.q_proj.weight": (torch.randn(WIDTH, WIDTH) * 0.02).half()}
    second = {"model.layers.0.mlp.down_proj.weight": (torch.randn(ROWS, WIDTH) * 0.02).bfloat16(),
              "model.layers.0.self_attn.o_proj.weight": (torch.randn(WIDTH, WIDTH) * 0.02).bfloat16(),
              "lm_head.weight": torch.randn(300, WIDTH).half()}
    save_file(first, str(path / "model-00001-of-00002.safetensors"), metadata={"format": "pt"})
    save_file(second, str(path / "model-00002-of-00002.safetensors"), metadata={"format": "pt"})
    weight_map = {**{k: "model-00001-of-00002.safetensors" for k in first},
                  **{k: "model-00002-of-00002.safetensors" for k in second}}
    (path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    return path


def adapters() -> list[Adapter]:
    """Two adapters in order: LoRA on float16 and bfloat16 weights, a DoRA magnitude, a saved head."""
    torch.manual_seed(1)

    def lora(rows: int) -> tuple:
        return torch.randn(4, WIDTH) * 0.1, torch.randn(rows, 4) * 0.1, 1.5

    first = Adapter(Path("first"), deltas={"model.layers.0.mlp.up_proj.weight": lora(ROWS),
                                           "model.layers.0.mlp.down_proj.weight": lora(ROWS)},
                    magnitudes={"model.layers.0.mlp.up_proj.weight": torch.rand(ROWS) + 0.5})
    second = Adapter(Path("second"), deltas={"model.layers.0.mlp.up_proj.weight": lora(ROWS),
                                             "model.layers.0.self_attn.q_proj.weight": lora(WIDTH),
                                             "lm_head.weight": lora(300)},
                     saved={"lm_head.weight": torch.randn(300, WIDTH)})
    return [first, second]


def written(out: Path) -> dict[str, bytes]:
    return {f.name: f.read_bytes() for f in sorted(out.iterdir())}


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_threads_write_what_one_thread_and_the_whole_tensor_fold_give(tmp_path, dtype):
    base = base_model(tmp_path / "base")
    ads = adapters()
    layout = check_fits(ads, base_tensors(base))
    outs = {}
    for workers in (1, 4):
        outs[workers] = tmp_path / f"out{workers}"
        outs[workers].mkdir()
        assert write_weights(layout, ads, outs[workers], dtype, 8 * 10**6, workers=workers) >= 2
    assert written(outs[1]) == written(outs[4])
    got = {}
    for f in sorted(outs[4].glob("*.safetensors")):
        got.update(load_file(str(f)))
    index = json.loads((outs[4] / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == set(layout) == set(got)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # MKL's sums depend on its thread count; the writers hold it at 1
    try:
        for key, info in layout.items():  # every tensor as one block of all its rows
            whole = merged_rows(key, info, ads, dtype, 0, info.shape[0], Scratch())
            assert got[key].dtype == dtype and torch.equal(got[key], whole), key
    finally:
        torch.set_num_threads(threads)
    # what went out unchanged is the base's bytes; what the adapters touch is changed
    base_weights = load_file(str(base / "model-00001-of-00002.safetensors"))
    if dtype == torch.float16:
        gate = "model.layers.0.mlp.gate_proj.weight"
        assert torch.equal(got[gate], base_weights[gate])
    assert not torch.equal(got["model.layers.0.mlp.up_proj.weight"].float(),
                           base_weights["model.layers.0.mlp.up_proj.weight"].float())
    # the saved head replaced the base's before the second adapter's LoRA was added to it
    a, b, scale = ads[1].deltas["lm_head.weight"]
    want = (ads[1].saved["lm_head.weight"] + scale * b @ a).to(dtype)
    assert torch.allclose(got["lm_head.weight"].float(), want.float(), atol=2e-3)


def test_writers_use_one_torch_thread_each_and_the_callers_count_comes_back(tmp_path):
    torch.set_num_threads(2)
    seen = []

    def make(scratch: Scratch) -> torch.Tensor:
        seen.append(torch.get_num_threads())
        return torch.zeros(4, dtype=torch.float16)

    pieces = [Piece("w", 8 * i, make=make) for i in range(4)]
    write_shard(tmp_path / "x.safetensors", {"w": ("float16", [16], 32)}, pieces, workers=3)
    assert seen == [1, 1, 1, 1]
    assert torch.get_num_threads() == 2
    assert load_file(str(tmp_path / "x.safetensors"))["w"].tolist() == [0.0] * 16


def test_one_thread_at_a_time_writes_to_a_shard_while_the_others_make_pieces(tmp_path, monkeypatch):
    """Writes and kernel copies into one file queue on the shard's lock (a thread waiting in the kernel's
    inode lock spins a CPU instead); making a piece is not under it."""
    active, most, guard = Counter(), Counter(), threading.Lock()

    def during(kind: str, step):
        with guard:
            active[kind] += 1
            most[kind] = max(most[kind], active[kind])
        time.sleep(0.01)
        try:
            return step()
        finally:
            with guard:
                active[kind] -= 1

    pwrite, copy_range = stream._pwrite, stream._copy_range
    monkeypatch.setattr(stream, "_pwrite", lambda *a: during("write", lambda: pwrite(*a)))
    monkeypatch.setattr(stream, "_copy_range", lambda *a: during("write", lambda: copy_range(*a)))
    save_file({"c": torch.arange(8, dtype=torch.float16)}, str(tmp_path / "src.safetensors"))
    source = stream.read_header(tmp_path / "src.safetensors")["c"]
    pieces = [Piece("w", 8 * i, make=lambda s, i=i: during("make", lambda: torch.full((4,), float(i)).half()))
              for i in range(8)] + list(stream.copy_pieces("c", source, size=4))
    write_shard(tmp_path / "x.safetensors", {"w": ("float16", [32], 64), "c": ("float16", [8], 16)}, pieces, 4)
    assert most["write"] == 1 and most["make"] > 1
    got = load_file(str(tmp_path / "x.safetensors"))
    assert got["w"].tolist() == [float(i) for i in range(8) for _ in range(4)]
    assert got["c"].tolist() == list(range(8))


def test_an_error_in_one_writer_stops_the_others_and_is_raised(tmp_path):
    made = []
    lock = threading.Lock()

    def make(i: int, scratch: Scratch) -> torch.Tensor:
        if i == 3:
            raise ValueError("piece 3 failed")
        with lock:
            made.append(i)
        return torch.zeros(4, dtype=torch.float16)

    pieces = (Piece("w", 8 * i, make=lambda s, i=i: make(i, s)) for i in range(1000))
    with pytest.raises(ValueError, match="piece 3 failed"):
        write_shard(tmp_path / "x.safetensors", {"w": ("float16", [4000], 8000)}, pieces, workers=2)
    assert len(made) < 20  # the other writer stopped after its current piece


def test_a_tensor_the_pieces_do_not_cover_is_an_error(tmp_path):
    pieces = [Piece("a", 0, make=lambda s: torch.zeros(2, dtype=torch.float16))]
    with pytest.raises(RuntimeError, match="b: 0 bytes, planned 4"):
        write_shard(tmp_path / "x.safetensors", {"a": ("float16", [2], 4), "b": ("float16", [2], 4)}, pieces, 2)


@pytest.mark.parametrize("key", ["model.layers.0.self_attn.o_proj.weight", "lm_head.weight"])
def test_a_cut_off_base_shard_is_one_clear_error(tmp_path, key):
    """A base shard cut short (an interrupted download): read rows and kernel-copied bytes both say so."""
    base = base_model(tmp_path / "base")
    layout = check_fits([], base_tensors(base))  # no adapters: o_proj is converted, lm_head copied
    shard = base / "model-00002-of-00002.safetensors"
    with open(shard, "r+b") as f:
        f.truncate(layout[key].start + 10)
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(UserError, match=r"ends before the tensor .* \(a cut-off file\?\)"):
        write_weights({key: layout[key]}, [], out, torch.float16, 1 << 30)


MEMORY_PROBE = """
import sys, torch
from pathlib import Path
from llama2ft.publishing.merge import Adapter, check_fits, write_weights
from llama2ft.publishing.safetensors_stream import base_tensors
base, out = Path(sys.argv[1]), Path(sys.argv[2])
torch.manual_seed(0)
key = "model.layers.0.mlp.up_proj.weight"
adapter = Adapter(Path("a"), deltas={key: (torch.randn(8, 4096) * 0.1, torch.randn(8192, 8) * 0.1, 2.0)})
layout = check_fits([adapter], base_tensors(base))
def rss(field):
    return next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith(field))
before = rss("VmRSS")
write_weights(layout, [adapter], out, torch.float16, 1 << 30, workers=2)
print(rss("VmHWM") - before)
"""


@pytest.mark.slow
def test_memory_stays_blocks_not_tensors(tmp_path):
    """The README's memory promise: merging a 64 MB weight raises peak memory by a few blocks per thread
    (the old writer held two whole tensors), measured in a fresh process (VmHWM)."""
    import subprocess
    import sys

    base = tmp_path / "base"
    base.mkdir()
    save_file({"model.layers.0.mlp.up_proj.weight": (torch.randn(8192, 4096) * 0.02).half()},
              str(base / "model.safetensors"))
    out = tmp_path / "out"
    out.mkdir()
    res = subprocess.run([sys.executable, "-c", MEMORY_PROBE, str(base), str(out)], capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    grew = int(res.stdout.split()[-1])
    assert grew < 16 * 2**20, f"peak memory grew by {grew / 2**20:.1f} MiB for a 64 MiB weight"
    assert (out / "model.safetensors").stat().st_size > 64 * 2**20
