"""Probe (GPU): is model.generate slower in a worker thread, or with the core's kwargs / streamer?"""
import sys, threading, time
from pathlib import Path
import torch
sys.path.insert(0, str(Path(__file__).resolve().parent)); sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import serve_latency as b
from llama2ft.dialogue import Turn
from llama2ft.generation import Sampling
from llama2ft.templates import encode_prompt
chat = b.build("7b", "cuda")
chat.tokenizer.eos_token_id = 3
ids = torch.tensor([encode_prompt(chat.template, chat.tokenizer, [Turn("human", b.QUESTION)])], device="cuda")
N = 64
def plain(**kw):
    torch.cuda.synchronize(); t = time.perf_counter()
    with torch.no_grad():
        chat.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=N, min_new_tokens=N,
                            do_sample=False, eos_token_id=3, pad_token_id=0, repetition_penalty=1.0, **kw)
    torch.cuda.synchronize(); return N / (time.perf_counter() - t)
def in_thread(fn):
    out = []
    t = threading.Thread(target=lambda: out.append(fn())); t.start(); t.join(); return out[0]
s = Sampling(do_sample=False, repetition_penalty=1.0, max_new_tokens=N)
plain()
for _ in range(2 if __name__ == "__main__" else 0):
    print("plain main      ", round(plain(), 1))
    print("plain thread    ", round(in_thread(plain), 1))
    print("core kwargs main", round(plain(temperature=None, top_p=None, top_k=None), 1))
    t = time.perf_counter(); chat.generate_ids([ids[0].tolist()], s, N); print("generate_ids main", round(N / (time.perf_counter() - t), 1))
    t = time.perf_counter(); in_thread(lambda: chat.generate_ids([ids[0].tolist()], s, N)); print("generate_ids thread", round(N / (time.perf_counter() - t), 1))
    gen = chat.stream([Turn("human", b.QUESTION)], s); t = time.perf_counter(); list(gen); print("core stream", round(N / (time.perf_counter() - t), 1))
