"""Several users at once on llama2ft-serve's API: aggregate tokens/s and time to first token at 1, 8 and 32
concurrent streaming requests, against the same server answering one request at a time, in one run.

    .venv/bin/python bench/serve_load.py              # CPU: the embedded Llama widened to hidden 1024, 8 layers
    .venv/bin/python bench/serve_load.py --quick      # smoke run: a small model, few tokens
    .venv/bin/python bench/serve_load.py --max-batch 1  # the server answering one request at a time

The model has random weights (seeded) and the embedded tokenizer; every answer is `--tokens` long (EOS,
special and byte tokens are suppressed), so each level does the same work per request. Requests are
greedy with the chat defaults' repetition penalty. Level 1 sends the fixed prompts one after another:
their answers are the solo answers, and its tokens/s is the baseline of `speedup_8`/`speedup_32`.
Levels 8 and 32 send the prompts all at once (32 = the 8 prompts four times) and check that every answer
equals its prompt's solo answer. The server runs in this process (uvicorn thread + the generation core);
the HTTP clients run in a process of their own, as real clients would. Last line: JSON.
"""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import multiprocessing as mp
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from api_server import serve_in_thread  # noqa: E402

PROMPTS = ["请介绍一下你自己。", "数字 680 的中文读法是什么？", "用中文写一首关于春天的短诗。", "北京有哪些有名的景点？",
           "What is the capital of France?", "如何学习一门新的编程语言？", "请解释一下什么是机器学习。", "给我讲一个简短的故事。"]
LEVELS = (1, 8, 32)


def build(hidden: int, layers: int, max_batch: int, dtype: str = "float32", cpu_linear: str = "auto"):
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from llama2ft import PROJECT_ROOT
    from llama2ft.data.templates import get_template
    from llama2ft.inference.engine import ChatModel
    from llama2ft.model.cpu_linear import pack_for_cpu

    tok = AutoTokenizer.from_pretrained(str(PROJECT_ROOT / "data" / "tokenizer"))
    tok.pad_token = tok.unk_token
    heads = max(1, hidden // 128)
    config = LlamaConfig(vocab_size=len(tok) + (-len(tok) % 32), hidden_size=hidden,
                         intermediate_size=int(hidden * 2.6875) // 32 * 32, num_hidden_layers=layers,
                         num_attention_heads=heads, num_key_value_heads=heads, max_position_embeddings=4096,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).to(getattr(torch, dtype)).eval()
    # Fixed answer lengths: no EOS, no specials or bytes, no ids past the tokenizer.
    model.generation_config.suppress_tokens = [*range(259), *range(len(tok), config.vocab_size)]
    params = sum(p.numel() for p in model.parameters())
    pack_for_cpu(model, cpu_linear)  # as llama2ft-serve loads a model (cpu_linear=)
    return ChatModel(model, tok, get_template("human_assistant"), 4096, "bench", max_batch=max_batch), params


def start_server(chat, n_tokens: int) -> str:
    from llama2ft.inference.sampling import Sampling

    return serve_in_thread(chat, Sampling(do_sample=False, max_new_tokens=n_tokens))


def ask(url: str, prompt: str, n_tokens: int) -> tuple[float, str, int]:
    """One streaming chat request: (time to first content, answer, completion tokens)."""
    import httpx

    body = {"model": "bench", "messages": [{"role": "user", "content": prompt}], "stream": True,
            "max_tokens": n_tokens, "temperature": 0}
    start = time.perf_counter()
    first, text, tokens = None, "", 0
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=900) as res:
        res.raise_for_status()
        for line in res.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            piece = chunk["choices"][0]["delta"].get("content")
            if piece:
                first = first or time.perf_counter()
                text += piece
            tokens = chunk.get("usage", {}).get("completion_tokens", tokens)
    return (first or time.perf_counter()) - start, text, tokens


def level(url: str, n_tokens: int, k: int) -> tuple[float, list[tuple[float, str, int]]]:
    """k requests at once (k=1: the prompts one after another); (wall seconds, results in prompt order)."""
    prompts = PROMPTS if k == 1 else [PROMPTS[i % len(PROMPTS)] for i in range(k)]
    start = time.perf_counter()
    if k == 1:
        results = [ask(url, p, n_tokens) for p in prompts]
    else:
        with cf.ThreadPoolExecutor(k) as pool:
            results = list(pool.map(lambda p: ask(url, p, n_tokens), prompts))
    return time.perf_counter() - start, results


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=48, help="answer tokens per request")
    ap.add_argument("--max-batch", type=int, default=32, help="the server's max_batch (1: one at a time)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default, one per core)")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                    help="the model's dtype (llama2ft-serve dtype=): bfloat16 pays on CPUs with AVX512-BF16/AMX")
    ap.add_argument("--cpu-linear", default="auto", choices=["auto", "onednn", "torch"],
                    help="llama2ft-serve cpu_linear=: oneDNN matrix products on packed weights (auto) or torch's")
    ap.add_argument("--quick", action="store_true", help="hidden 256, 2 layers, 12 tokens")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.quick:
        args.hidden, args.layers, args.tokens = 256, 2, 12
    chat, params = build(args.hidden, args.layers, args.max_batch, args.dtype, args.cpu_linear)
    n = args.tokens
    url = start_server(chat, n)
    client = mp.get_context("spawn").Pool(1)
    client.apply(ask, (url, PROMPTS[0], 4))  # warm-up: kernels, allocator, the client's imports
    stats: dict[int, dict] = {}
    solo: list[str] = []
    equal = True
    for k in LEVELS:
        wall, results = client.apply(level, (url, n, k))
        assert all(t == n for _, _, t in results), [t for _, _, t in results]
        ttfts = [t for t, _, _ in results]
        stats[k] = {"tokens_per_s": len(results) * n / wall, "ttft_p50_s": statistics.median(ttfts),
                    "ttft_p95_s": pct(ttfts, 0.95)}
        answers = [a for _, a, _ in results]
        if k == 1:
            solo = answers
        else:
            same = [a == solo[i % len(solo)] for i, a in enumerate(answers)]
            stats[k]["equal"] = f"{sum(same)}/{len(same)}"
            equal = equal and all(same)
    client.close()
    most = chat._batcher.most if chat._batcher is not None else 1
    chat.close()

    print(f"model: random Llama, hidden {args.hidden}, {args.layers} layers, {params / 1e6:.0f} M parameters, "
          f"{args.dtype}, {torch.get_num_threads()} threads; {n} greedy tokens per answer; max_batch {args.max_batch} "
          f"(largest batch run: {most})")
    print(f"{'concurrent':>10}{'tokens/s':>10}{'TTFT p50 s':>12}{'TTFT p95 s':>12}{'greedy = solo':>15}")
    for k, s in stats.items():
        print(f"{k:>10}{s['tokens_per_s']:10.1f}{s['ttft_p50_s']:12.2f}{s['ttft_p95_s']:12.2f}"
              f"{s.get('equal', '(solo)'):>15}")
    base = stats[1]["tokens_per_s"]
    print(json.dumps({"tokens_per_s": {str(k): round(s["tokens_per_s"], 1) for k, s in stats.items()},
                      "speedup_8": round(stats[8]["tokens_per_s"] / base, 2),
                      "speedup_32": round(stats[32]["tokens_per_s"] / base, 2),
                      "ttft_p95_s": {str(k): round(s["ttft_p95_s"], 3) for k, s in stats.items()},
                      "greedy_equal_solo": equal}))


if __name__ == "__main__":
    main()
