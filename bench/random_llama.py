"""Save a randomly initialised Llama of the Llama-2-7B shape (or a tiny one for a CPU dry run) with vocab 32000,
so `llama2ft-train model.name_or_path=DIR` can run the real command on it; built on the device in bf16 (no
28 GB float32 initialisation on the CPU).

  python3 bench/random_llama.py --shape 7b --device cuda --out /tmp/llama-7b-random
"""
from __future__ import annotations

import argparse
import time

import torch

SHAPES = {"7b": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32),
          "tiny": dict(hidden_size=64, intermediate_size=192, num_hidden_layers=2, num_attention_heads=2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shape", choices=sorted(SHAPES), default="7b")
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cuda")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    from transformers import LlamaConfig, LlamaForCausalLM

    t0 = time.perf_counter()
    config = LlamaConfig(vocab_size=32000, max_position_embeddings=4096, bos_token_id=1, eos_token_id=2, pad_token_id=0,
                         tie_word_embeddings=False, **SHAPES[args.shape])
    torch.manual_seed(0)
    with torch.device(args.device):
        model = LlamaForCausalLM._from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(args.out, max_shard_size="5GB")
    params = sum(p.numel() for p in model.parameters())
    print(f"saved a random {args.shape} Llama ({params / 1e9:.2f}B parameters, bf16) in {args.out} "
          f"({time.perf_counter() - t0:.0f}s)", flush=True)


if __name__ == "__main__":
    main()
