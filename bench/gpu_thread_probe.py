"""GPU probe: is `model.generate` slower in a thread other than the main one? (It is, on an H100, for
the first call in a fresh thread: this is why the generation core keeps one long-lived thread.)

    python3 bench/gpu_thread_probe.py      # on a GPU machine, after the wheels of bench/gpu_serve.sh

Prints tokens/s of greedy generation on a Llama-2-7B-shaped random model (bench/serve_latency.py's
`7b` preset): on the main thread, in a fresh thread per call, and in one thread reused for 3 calls.
"""
import sys
import threading
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import serve_latency as bench  # noqa: E402

from llama2ft.data.dialogue import Turn  # noqa: E402
from llama2ft.data.templates import encode_prompt  # noqa: E402

N = 64


def main() -> None:
    chat = bench.build("7b", "cuda")
    ids = torch.tensor([encode_prompt(chat.template, chat.tokenizer, [Turn("human", bench.QUESTION)])], device="cuda")

    def generate() -> float:
        torch.cuda.synchronize()
        start = time.perf_counter()
        with torch.no_grad():
            chat.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=N,
                                min_new_tokens=N, do_sample=False, eos_token_id=bench.config_eos(),
                                pad_token_id=chat.tokenizer.pad_token_id, repetition_penalty=1.0)
        torch.cuda.synchronize()
        return N / (time.perf_counter() - start)

    def in_thread(fn) -> None:
        worker = threading.Thread(target=fn)
        worker.start()
        worker.join()

    generate()  # warm-up on the main thread
    for _ in range(2):
        print(f"main thread          {generate():6.1f} tokens/s", flush=True)
        in_thread(lambda: print(f"fresh thread         {generate():6.1f} tokens/s", flush=True))
    in_thread(lambda: [print(f"reused thread, call {i} {generate():6.1f} tokens/s", flush=True) for i in range(3)])


if __name__ == "__main__":
    main()
