"""One decode step of serve_load's model with PyTorch's linear layers (MKL) against oneDNN-packed ones
(`cpu_linear=torch` vs `auto`), at 1, 8 and 32 rows, in one run.

    .venv/bin/python bench/cpu_linear.py            # hidden 1024, 8 layers (105 M parameters), float32
    .venv/bin/python bench/cpu_linear.py --quick    # hidden 256, 2 layers

Each row has a 64-token prompt in the KV cache; a step appends one token per row. Printed: milliseconds
per step, the packed model's speedup over the unpacked one, and what a step of 8 (32) rows costs over a
step of 1 -- the ceiling of continuous batching's gain is rows / that cost. Last line: JSON.
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from serve_load import build  # noqa: E402

from llama2ft.model.cpu_linear import pack_linears  # noqa: E402

ROWS = (1, 8, 32)


def step_ms(model, rows: int, steps: int, prompt: int = 64) -> float:
    """Median milliseconds of one decode step for `rows` rows (after a prefill and two warm-up steps)."""
    from transformers import DynamicCache

    gen = torch.Generator().manual_seed(rows)
    ids = torch.randint(300, model.config.vocab_size - 64, (rows, prompt), generator=gen)
    times = []
    with torch.no_grad():
        cache = DynamicCache(config=model.config)
        model(input_ids=ids, cache=cache, use_cache=True, logits_to_keep=1)
        for i in range(steps + 2):
            start = time.perf_counter()
            model(input_ids=ids[:, i:i + 1], cache=cache, use_cache=True, logits_to_keep=1)
            times.append(time.perf_counter() - start)
    return sorted(times[2:])[len(times[2:]) // 2] * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--steps", type=int, default=15)
    ap.add_argument("--quick", action="store_true", help="hidden 256, 2 layers, 5 steps")
    args = ap.parse_args()
    if args.quick:
        args.hidden, args.layers, args.steps = 256, 2, 5
    chat, params = build(args.hidden, args.layers, max_batch=1, cpu_linear="torch")
    plain = chat.model
    packed = copy.deepcopy(plain)
    pack_linears(packed)
    ms = {name: {r: step_ms(m, r, args.steps) for r in ROWS} for name, m in (("torch", plain), ("onednn", packed))}
    print(f"model: random Llama, hidden {args.hidden}, {args.layers} layers, {params / 1e6:.0f} M parameters, float32, "
          f"{torch.get_num_threads()} threads; median of {args.steps} decode steps")
    print(f"{'rows':>5}{'torch ms':>10}{'oneDNN ms':>11}{'speedup':>9}{'torch xN/x1':>13}{'oneDNN xN/x1':>14}")
    for r in ROWS:
        print(f"{r:>5}{ms['torch'][r]:10.1f}{ms['onednn'][r]:11.1f}{ms['torch'][r] / ms['onednn'][r]:9.2f}"
              f"{ms['torch'][r] / ms['torch'][1]:13.2f}{ms['onednn'][r] / ms['onednn'][1]:14.2f}")
    print(json.dumps({"step_ms": {k: {str(r): round(v, 2) for r, v in d.items()} for k, d in ms.items()},
                      "speedup": {str(r): round(ms["torch"][r] / ms["onednn"][r], 2) for r in ROWS},
                      "cost_8_over_1": {k: round(d[8] / d[1], 2) for k, d in ms.items()}}))
    chat.close()


if __name__ == "__main__":
    main()
