"""Time to first token and tokens/s of llama2ft-serve's API against a plain `model.generate` call on the
same model, measured in the same process (ratios, never absolute targets).

    .venv/bin/python bench/serve_latency.py                       # CPU: a small random Llama
    python3 bench/serve_latency.py --device cuda --preset 7b      # GPU: Llama-2-7B shape, bf16

The API path is the real one: the FastAPI app of `llama2ft.serving.api`, run by uvicorn on 127.0.0.1, asked
over HTTP with server-sent events. Both paths decode greedily the same number of tokens (EOS is
disabled by pointing it at a byte token, and the random model is kept to text pieces), so the difference
is the server's cost: HTTP, SSE framing, the per-request streamer, detokenisation and the GIL they share
with the generation thread.
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

PRESETS = {  # hidden, intermediate, layers, heads, kv heads, vocab
    "cpu": (512, 1376, 8, 8, 8, None),
    "overhead": (64, 128, 8, 2, 2, None),  # so small that decoding is Python-bound, as on a GPU
    "7b": (4096, 11008, 32, 32, 32, 32000),
}
QUESTION = "请介绍一下你自己，并用中文写一首关于春天的短诗。"


def build(preset: str, device: str):
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from llama2ft import PROJECT_ROOT
    from llama2ft.inference.engine import ChatModel
    from llama2ft.data.templates import get_template

    tok = AutoTokenizer.from_pretrained(str(PROJECT_ROOT / "data" / "tokenizer"))
    tok.pad_token = tok.unk_token
    h, inter, layers, heads, kv, vocab = PRESETS[preset]
    config = LlamaConfig(vocab_size=vocab or len(tok) + (-len(tok) % 32), hidden_size=h, intermediate_size=inter,
                         num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv,
                         max_position_embeddings=4096, bos_token_id=tok.bos_token_id,
                         eos_token_id=config_eos(), pad_token_id=tok.pad_token_id)
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM(config).to(dtype)
    model.eval()
    # Random weights pick any id; keep them to text pieces (no specials, bytes or ids past the tokenizer)
    # so both paths decode the same fixed number of visible tokens. Both read generation_config.
    model.generation_config.suppress_tokens = [*range(259), *range(len(tok), config.vocab_size)]
    return ChatModel(model, tok, get_template("human_assistant"), 4096, preset)


def config_eos() -> int:
    return 3  # a byte-fallback id the prompt never produces: no early stop, fixed lengths for both paths


def plain_generate(chat, n_tokens: int) -> tuple[float, float]:
    """TTFT and decode tokens/s of model.generate on the rendered prompt (a minimal streamer timestamps)."""
    from transformers.generation.streamers import BaseStreamer

    from llama2ft.data.dialogue import Turn
    from llama2ft.data.templates import encode_prompt

    ids = torch.tensor([encode_prompt(chat.template, chat.tokenizer, [Turn("human", QUESTION)])],
                       device=chat.model.device)

    class Clock(BaseStreamer):
        def __init__(self):
            self.times: list[float] = []

        def put(self, value):
            self.times.append(time.perf_counter())

        def end(self):
            pass

    clock = Clock()
    sync()
    start = time.perf_counter()
    with torch.no_grad():
        chat.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=n_tokens,
                            min_new_tokens=n_tokens, do_sample=False, eos_token_id=config_eos(),
                            pad_token_id=chat.tokenizer.pad_token_id, streamer=clock, repetition_penalty=1.0)
    sync()
    end = time.perf_counter()
    ttft = clock.times[1] - start  # times[0] is the prompt being handed over
    return ttft, n_tokens / (end - start)


def core_stream(chat, n_tokens: int) -> tuple[float, float]:
    """TTFT and tokens/s of the generation core's stream (per-request streamer thread), no HTTP."""
    from llama2ft.data.dialogue import Turn
    from llama2ft.inference.sampling import Sampling

    samp = Sampling(do_sample=False, repetition_penalty=1.0, max_new_tokens=n_tokens)
    start = time.perf_counter()
    gen = chat.stream([Turn("human", QUESTION)], samp)
    first = None
    for _ in gen:
        first = first or time.perf_counter()
    end = time.perf_counter()
    return (first or end) - start, gen.reply.completion_tokens / (end - start)


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def start_server(chat, n_tokens: int) -> str:
    from llama2ft.inference.sampling import Sampling

    chat.tokenizer.eos_token_id = config_eos()  # same fixed length as the plain path
    return serve_in_thread(chat, Sampling(do_sample=False, repetition_penalty=1.0, max_new_tokens=n_tokens))


def api_request(url: str, n_tokens: int) -> tuple[float, float, int]:
    """TTFT (first content chunk), tokens/s over the whole request, completion tokens."""
    import httpx

    body = {"model": "bench", "messages": [{"role": "user", "content": QUESTION}], "stream": True,
            "max_tokens": n_tokens, "temperature": 0}
    start = time.perf_counter()
    first = None
    tokens = 0
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=600) as res:
        for line in res.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if first is None and chunk["choices"][0]["delta"].get("content"):
                first = time.perf_counter()
            tokens = chunk.get("usage", {}).get("completion_tokens", tokens)
    end = time.perf_counter()
    return (first or end) - start, tokens / (end - start), tokens


def concurrent_requests(url: str, n_tokens: int, k: int) -> list[tuple[float, float, int]]:
    with cf.ThreadPoolExecutor(k) as pool:
        return list(pool.map(lambda _: api_request(url, n_tokens), range(k)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--preset", default="cpu", choices=sorted(PRESETS))
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--concurrent", type=int, default=8)
    args = ap.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    chat = build(args.preset, args.device)
    n = args.tokens
    url = start_server(chat, n)
    # The HTTP client runs in its own process, as a real client would: in the server's process it
    # would compete with generation for the GIL.
    client = mp.get_context("spawn").Pool(1)
    plain_generate(chat, 8)  # warm-up (kernels, allocator)
    client.apply(api_request, (url, 8))
    plain, core, api = [], [], []
    for _ in range(args.repeats):  # alternated, so that a change in machine load hits all alike
        plain.append(plain_generate(chat, n))
        core.append(core_stream(chat, n))
        api.append(client.apply(api_request, (url, n)))
    assert all(t == n for _, _, t in api), [t for _, _, t in api]
    t0 = time.perf_counter()
    together = client.apply(concurrent_requests, (url, n, args.concurrent))
    wall = time.perf_counter() - t0
    client.close()

    med = statistics.median
    p_ttft, p_tps = med(t for t, _ in plain), med(s for _, s in plain)
    a_ttft, a_tps = med(t for t, _, _ in api), med(s for _, s, _ in api)
    print(f"device {args.device} ({torch.cuda.get_device_name() if args.device == 'cuda' else 'CPU'}), "
          f"preset {args.preset}, {n} new tokens, median of {args.repeats}")
    print(f"{'':28}{'TTFT ms':>10}{'tokens/s':>11}")
    print(f"{'model.generate (plain)':28}{p_ttft * 1e3:10.1f}{p_tps:11.1f}")
    print(f"{'generation core stream':28}{med(t for t, _ in core) * 1e3:10.1f}{med(s for _, s in core):11.1f}")
    print(f"{'API, streaming over HTTP':28}{a_ttft * 1e3:10.1f}{a_tps:11.1f}")
    print(f"ratio API/plain: TTFT {a_ttft / p_ttft:.2f}x, tokens/s {a_tps / p_tps:.2f}x")
    print(f"{args.concurrent} concurrent API requests: {args.concurrent * n / wall:.1f} tokens/s in all, "
          f"worst TTFT {max(t for t, _, _ in together) * 1e3:.0f} ms (queued: one generation at a time)")


if __name__ == "__main__":
    main()
