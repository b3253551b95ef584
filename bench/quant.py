"""GGUF quantization types against f16: size and quality of each `llama2ft-export quant=...`.

    OMP_NUM_THREADS=1 .venv/bin/python bench/quant.py                 # trains its own model (~2-4 min here)
    .venv/bin/python bench/quant.py --merged merged/my-model --rows 200   # any merged llama2ft folder

Without --merged it trains the embedded default recipe at widths a k-quant takes (hidden 256, FFN 768:
rows that are multiples of 256; the embedded default, 128, makes every k-quant fall back), 400 steps,
and merges it. Each type is exported by llama2ft-export (its own process); then llama-cpp-python scores
held-out rows (data/sample/dev.csv, the training tokenization) with every file:
  kl_mean      mean KL(f16 || type) of the next-token distributions, every position of every row (nats)
  top1_agree   share of positions whose most likely next token is the f16 file's
  exact_match  held-out answers right, greedy through `Llama.create_chat_completion` (the GGUF's template)
and size (bytes, and bits per weight of the 2-D tensors). With --memory it also exports a synthetic
1.3 GB float16 Llama (bench/merge.py's) to q4_k_m and reports the peak anonymous memory of that process
against the largest tensor (what "streamed" promises). The last line is one JSON object.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
TYPES = ["f16", "q8_0", "q6_k", "q5_k_m", "q4_k_m", "q4_0"]
PEAK = """
import json, sys, threading, time
from omegaconf import OmegaConf
from llama2ft.config.app_schemas import ExportConfig
from llama2ft.export import run_export
peak = {"anon": 0}
def watch():
    while True:
        for line in open("/proc/self/status"):
            if line.startswith("RssAnon"):
                peak["anon"] = max(peak["anon"], int(line.split()[1]) * 1024)
        time.sleep(0.005)
threading.Thread(target=watch, daemon=True).start()
time.sleep(0.05)
base = peak["anon"]
t0 = time.perf_counter()
run_export(OmegaConf.merge(OmegaConf.structured(ExportConfig), json.loads(sys.argv[1])))
seconds = time.perf_counter() - t0
time.sleep(0.05)
hwm = next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith("VmHWM"))
print(json.dumps({"seconds": seconds, "anon_peak": peak["anon"], "anon_before": base, "hwm": hwm}))
"""


def run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", **kw.pop("env", {})}
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=str(ROOT), env=env, **kw)
    if res.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:4])} failed:\n{res.stderr[-3000:]}")
    return res


def export(source: Path, out: Path, quant: str) -> dict:
    """llama2ft-export in its own process; its time and memory."""
    args = {"source": str(source), "output": str(out), "quant": quant, "modelfile": False, "overwrite": True}
    res = run([sys.executable, "-c", PEAK, json.dumps(args)])
    return json.loads(res.stdout.strip().splitlines()[-1])


def train_and_merge(work: Path, steps: int) -> Path:
    run_dir, merged = work / "run", work / "merged"
    t0 = time.perf_counter()
    run([sys.executable, "-m", "llama2ft.train", "model.init.hidden_size=256", "model.init.intermediate_size=768",
         f"trainer.max_steps={steps}", f"trainer.eval_steps={steps}", f"trainer.save_steps={steps}",
         f"hydra.run.dir={run_dir}"])
    run([sys.executable, "-m", "llama2ft.merge", f"run={run_dir}", f"output={merged}", "verify=false"])
    print(f"trained {steps} steps (hidden 256) and merged in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    return merged


def held_out(merged: Path, n: int) -> tuple[list[list[int]], list[tuple[list[dict], str]]]:
    """Rows of data/sample/dev.csv: their training ids, and (messages, answer) of their last turn."""
    from llama2ft.data.csv_reader import read_column
    from llama2ft.data.dialogue import parse_dialogue
    from llama2ft.data.templates import encode_dialogue, get_template
    from llama2ft.model.loading import open_tokenizer
    from llama2ft.model.run_folder import read_chat_meta

    meta = read_chat_meta(merged)
    tok = open_tokenizer(str(merged))
    template = get_template(meta.get("template", "human_assistant"), meta.get("system"))
    ids, questions = [], []
    for _, cell in list(read_column(ROOT / "data" / "sample" / "dev.csv"))[:n]:
        turns = parse_dialogue(cell)
        ids.append(encode_dialogue(template, tok, turns).input_ids)
        msgs = [{"role": "user" if t.role == "human" else "assistant", "content": t.text} for t in turns[:-1]]
        questions.append((msgs, turns[-1].text))
    return ids, questions


def scores(path: Path, rows: list[list[int]]) -> list[np.ndarray]:
    import llama_cpp

    llm = llama_cpp.Llama(model_path=str(path), n_ctx=512, logits_all=True, verbose=False,
                          n_threads=int(os.environ.get("OMP_NUM_THREADS", "0")) or None)
    out = []
    for ids in rows:
        llm.reset()
        llm.eval(ids)
        out.append(np.array(llm.scores[:len(ids) - 1], dtype=np.float64))
    return out


def exact_match(path: Path, questions: list[tuple[list[dict], str]]) -> float:
    import llama_cpp

    llm = llama_cpp.Llama(model_path=str(path), n_ctx=512, verbose=False,
                          n_threads=int(os.environ.get("OMP_NUM_THREADS", "0")) or None)
    right = 0
    for msgs, answer in questions:
        got = llm.create_chat_completion(messages=msgs, temperature=0, top_k=1, repeat_penalty=1.0, max_tokens=24)
        right += got["choices"][0]["message"]["content"].strip() == answer.strip()
    return right / len(questions)


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def compare(ref: list[np.ndarray], got: list[np.ndarray]) -> tuple[float, float]:
    kl, agree, n = 0.0, 0, 0
    for r, g in zip(ref, got):
        lr, lg = log_softmax(r), log_softmax(g)
        kl += float((np.exp(lr) * (lr - lg)).sum())
        agree += int((r.argmax(-1) == g.argmax(-1)).sum())
        n += len(r)
    return kl / n, agree / n


def weight_bits(path: Path) -> float:
    """Bits per weight of the 2-D tensors (what the type quantizes)."""
    import gguf

    reader = gguf.GGUFReader(str(path))
    mats = [t for t in reader.tensors if len(t.shape) == 2]
    return 8 * sum(int(t.n_bytes) for t in mats) / sum(int(t.n_elements) for t in mats)


def memory_check(work: Path) -> dict:
    """Export a synthetic 1.3 GB float16 Llama to q4_k_m; peak anonymous memory against its largest tensor."""
    sys.path.insert(0, str(ROOT / "bench"))
    import merge as merge_bench  # bench/merge.py: the synthetic multi-shard Llama

    from llama2ft.model.run_folder import write_chat_meta

    base = work / "big"
    merge_bench.build_base(base, 10, 2048, 5504, 32000)
    write_chat_meta(base, "human_assistant", None)
    m = export(base, work / "big.q4_k_m.gguf", "q4_k_m")
    largest = 32000 * 2048 * 2
    return {"model_gb": round(sum(f.stat().st_size for f in base.glob("*.safetensors")) / 1e9, 2),
            "largest_tensor_mb": round(largest / 1e6, 1), "export_s": round(m["seconds"], 1),
            "anon_peak_mb_over_start": round((m["anon_peak"] - m["anon_before"]) / 1e6, 1),
            "vm_hwm_mb": round(m["hwm"] / 1e6, 1), "q4_k_m_gb": round((work / "big.q4_k_m.gguf").stat().st_size / 1e9, 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--merged", help="a merged llama2ft folder (default: train one at hidden 256)")
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--rows", type=int, default=195, help="held-out rows of data/sample/dev.csv")
    ap.add_argument("--memory", action="store_true", help="also the 1.3 GB streaming check")
    ap.add_argument("--keep", action="store_true")
    a = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="llama2ft-bench-quant-", dir="/tmp"))
    try:
        merged = Path(a.merged) if a.merged else train_and_merge(work, a.steps)
        rows, questions = held_out(merged, a.rows)
        table = {}
        for quant in TYPES:
            path = work / f"m.{quant}.gguf"
            m = export(merged, path, quant)
            table[quant] = {"bytes": path.stat().st_size, "bits_per_weight": round(weight_bits(path), 2),
                            "export_s": round(m["seconds"], 2)}
        ref = scores(work / "m.f16.gguf", rows)
        for quant in TYPES:
            kl, agree = compare(ref, scores(work / f"m.{quant}.gguf", rows))
            table[quant].update(kl_mean=round(kl, 6), top1_agree=round(agree, 4),
                                exact_match=round(exact_match(work / f"m.{quant}.gguf", questions), 3))
        print(f"{'type':8s} {'size':>10s} {'bits/w':>7s} {'KL(f16||q)':>11s} {'top-1':>7s} {'exact':>6s}",
              file=sys.stderr)
        for quant, r in table.items():
            print(f"{quant:8s} {r['bytes'] / 1e6:8.2f}MB {r['bits_per_weight']:7.2f} {r['kl_mean']:11.6f} "
                  f"{r['top1_agree']:7.4f} {r['exact_match']:6.3f}", file=sys.stderr)
        result = {"model": str(a.merged or "embedded recipe at hidden 256, FFN 768, 400 steps"),
                  "rows": len(rows), "positions": sum(len(r) - 1 for r in rows), "types": table}
        if a.memory:
            result["memory"] = memory_check(work)
            print(f"memory: {result['memory']}", file=sys.stderr)
    finally:
        if not a.keep:
            shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
