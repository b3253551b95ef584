"""Training throughput: the Llama2-Chinese community recipe vs llama2ft's packed pipeline.

Both runs train the same randomly initialised Llama model (same seed, LoRA on all seven projections,
AdamW lr 2e-4) on the same rows, truncated at max_seq_len, one pass each, in one process:
* baseline: one sample per sequence, loss on every token (labels = input_ids), random order, batches of
  `--baseline-rows` rows right-padded to a multiple of 8 with an attention mask (the community's recipe;
  it tokenizes the literal text, which gives exactly the ids `encode_dialogue` builds);
* llama2ft: `encode_dialogue` (answers-only labels), `pack_columns` into rows of max_seq_len,
  `PackedCollator` (position_ids, no mask: block-diagonal causal attention), SDPA.
Per step both get about the same tokens: llama2ft takes as many packed rows per batch as come closest
to the baseline's mean padded positions per step (`--packed-rows` overrides). The first `--warmup`
steps of each run train but are not timed. On CPU the runs are interleaved step by step (the one with
the smaller share of its samples done goes next), so load from other processes hits both alike.

Figures (JSON keys baseline_* / llama2ft_*): real_tokens_per_s (non-padding), trained_tokens_per_s
(labels in the loss after the shift), padding_fraction (pad positions / positions), peak_mem_mb (rise
of one training step over the memory held before it; CUDA: max over timed steps of max_memory_allocated
- memory_allocated, and peak_total_mem_mb; CPU: one extra step on the run's largest batch after its
eval, VmHWM after minus VmRSS before, after malloc_trim and a VmHWM reset via /proc/self/clear_refs),
model_tflops = (6 N real_tokens + 6 layers hidden sum(sample_len^2)) / s with N the weights of all
linear layers (lm_head and LoRA included, embeddings not; LoRA approximation: forward 2N, backward 4N;
causal attention within samples only; recomputation not counted), mfu = model FLOP/s / the best
large-matmul rate measured in this run (float32 CPU, bf16 CUDA), train_loss_last (own objective, last
fifth of steps) and eval_loss: answers-only loss of each trained adapter on held-out packed rows
(init_eval_loss: untrained). speedup = llama2ft / baseline real tokens/s.

  .venv/bin/python bench/train_throughput.py                     # CPU, small model, ~2-4 min on 2 cores
  .venv/bin/python bench/train_throughput.py --quick             # seconds: smoke test
  python3 bench/train_throughput.py --device cuda --preset 7b    # Llama-2-7B shape on one GPU, ~4-6 min
The last line printed is one JSON object with every figure.
"""
from __future__ import annotations

import argparse
import ctypes
import gc
import importlib.util
import json
import math
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Optional

import torch

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(REPO))  # run from a checkout without installing
if str(BENCH) not in sys.path:  # rows and batches come from the helper next to this file (runpy, imports)
    sys.path.insert(0, str(BENCH))
from llama2ft.model.attention import packed_attention, packed_row_multiple  # noqa: E402
from llama2ft.model.kernels import use_liger  # noqa: E402
from throughput_data import SHARED_CSV, Batch, baseline_batches, load_samples, packed_batches  # noqa: E402
from throughput_model import PRESETS, build_model, linear_params  # noqa: E402


def log(msg: str) -> None:
    print(msg, flush=True)


# ---------------------------------------------------------------- memory, peak
def _proc_kb(field_name: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field_name + ":"))


def _reset_cpu_peak() -> Optional[int]:
    """Give freed heap pages back to the OS (else a step reusing them shows no RSS rise), reset VmHWM to
    the current RSS (Linux >= 4.0) and return that RSS in bytes; None where this is not possible."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        Path("/proc/self/clear_refs").write_text("5")
        return _proc_kb("VmRSS") * 1024
    except (OSError, AttributeError, StopIteration):
        return None


def sync(device: str) -> None:
    torch.cuda.synchronize() if device == "cuda" else None


def matmul_peak(device: str, n: int) -> float:
    """Best FLOP/s of n x n matmuls (float32 on CPU, bf16 on CUDA)."""
    dtype, reps, best = (torch.bfloat16, 10, 0.0) if device == "cuda" else (torch.float32, 1, 0.0)
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    a @ b, a @ b  # warm-up
    for _ in range(5):
        sync(device)
        t0 = time.perf_counter()
        for _ in range(reps):
            a @ b
        sync(device)
        best = max(best, 2 * n ** 3 * reps / (time.perf_counter() - t0))
    return best


# ---------------------------------------------------------------- training runs
class Run:
    """One pipeline's training run; steps are driven from outside so two runs can be interleaved."""

    def __init__(self, name: str, batches: list[Batch], args: argparse.Namespace, vocab: int):
        self.name, self.batches, self.args, self.vocab = name, batches, args, vocab
        self.model: Any = None
        self.opt: Any = None
        self.step = self.positions = self.real = self.samples = self.n_linear = 0
        self.timed_s = self.total_s = self.last_log = 0.0
        self.timed: dict[str, float] = dict(real=0, trained=0, flops=0)  # over the steps after warm-up
        self.losses: list[tuple[float, int]] = []  # (batch loss, trained tokens)
        self.peak_step_mb: Optional[float] = None
        self.peak_total_mb: Optional[float] = None
        self.eval_loss: Optional[float] = None
        self.error: Optional[str] = None
        self.settings: dict[str, Any] = {}

    def setup(self) -> None:
        # the community recipe: stock SDPA, gradient checkpointing on the 7b shape, no fused kernels; llama2ft:
        # what its trainer picks (packed-row attention, Liger on CUDA when installed, checkpointing if needed)
        a, cuda = self.args, self.args.device == "cuda"
        if self.name == "baseline":
            attn, ckpt, liger = a.attn, "true" if a.preset == "7b" else "false", False
        else:
            attn, ckpt, liger = a.packed_attention, a.grad_ckpt, use_liger(a.kernels, cuda)
        tokens = max(b.tensors["input_ids"].numel() for b in self.batches)
        self.model, plan = build_model(a, self.vocab, attn, ckpt, liger, tokens)
        self.settings = {"attention": attn, "kernels": "liger" if liger else "none",
                         "gradient_checkpointing": plan.enabled}
        log(f"[{self.name}] attention {attn}; kernels {self.settings['kernels']}; {plan.message}")
        self.n_linear = linear_params(self.model)
        self.opt = torch.optim.AdamW([p for p in self.model.parameters() if p.requires_grad], lr=self.args.lr)
        if self.args.device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        self.last_log = time.perf_counter()

    def active(self) -> bool:
        return (self.model is not None and self.error is None and self.step < len(self.batches)
                and (self.args.time_budget <= 0 or self.timed_s < self.args.time_budget))

    def progress(self) -> float:
        return self.samples / max(1, sum(b.samples for b in self.batches))

    def do_step(self) -> None:
        b, dev = self.batches[self.step], self.args.device
        inputs = {k: v.to(dev) for k, v in b.tensors.items()}
        if dev == "cuda":
            before = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
        try:
            sync(dev)
            t0 = time.perf_counter()
            loss = self.model(**inputs).loss
            loss.backward()
            self.opt.step()
            self.opt.zero_grad(set_to_none=True)
            value = float(loss.detach())  # synchronizes
            sync(dev)
            dt = time.perf_counter() - t0
        except torch.OutOfMemoryError:
            self.error = f"out of memory at step {self.step + 1} ({tuple(b.tensors['input_ids'].shape)})"
            log(f"[{self.name}] {self.error}")
            self.opt.zero_grad(set_to_none=True)
            return
        if dev == "cuda" and self.step >= self.args.warmup:  # warm-up steps hold one-time allocations
            rise = (torch.cuda.max_memory_allocated() - before) / 2 ** 20
            self.peak_step_mb = max(self.peak_step_mb or 0.0, rise)
            self.peak_total_mb = max(self.peak_total_mb or 0.0, torch.cuda.max_memory_allocated() / 2 ** 20)
        self.step, self.total_s, self.samples = self.step + 1, self.total_s + dt, self.samples + b.samples
        self.real, self.positions = self.real + b.real, self.positions + b.tensors["input_ids"].numel()
        self.losses.append((value, b.trained))
        if self.step > self.args.warmup:
            flops = 6 * self.n_linear * b.real + 6 * self.args.layers * self.args.hidden * b.sq
            self.timed_s += dt
            for key, v in (("real", b.real), ("trained", b.trained), ("flops", flops)):
                self.timed[key] += v
        now = time.perf_counter()
        if now - self.last_log > self.args.log_every or self.step == len(self.batches):
            rate = self.timed["real"] / self.timed_s if self.timed_s else 0.0
            log(f"[{self.name}] step {self.step}/{len(self.batches)} loss {value:.3f} "
                f"{rate:,.0f} real tok/s ({self.total_s:.0f}s)")
            self.last_log = now

    def finish(self, eval_batches: list[Batch]) -> None:
        if self.model is not None and self.error is None:
            try:
                self.eval_loss = evaluate(self.model, eval_batches, self.args.device)
                if self.args.device == "cpu" and self.step:
                    self.peak_step_mb = self.cpu_memory_probe()
            except torch.OutOfMemoryError:
                log(f"[{self.name}] out of memory in the held-out evaluation")
        self.model = self.opt = None
        gc.collect()
        if self.args.device == "cuda":
            torch.cuda.empty_cache()

    def cpu_memory_probe(self) -> Optional[float]:
        """RSS rise of one more training step on this run's largest batch (after eval: no figure changes).
        Measured apart from the timed steps because returning pages to the OS every step costs time."""
        b = max(self.batches[: self.step], key=lambda b: (b.tensors["input_ids"].numel(), b.real))
        before = _reset_cpu_peak()
        if before is None:
            return None
        self.model(**b.tensors).loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        return (_proc_kb("VmHWM") * 1024 - before) / 2 ** 20

    def figures(self, peak: float) -> dict[str, Any]:
        t = self.timed_s or float("nan")
        tail = self.losses[-max(1, len(self.losses) // 5):]
        return {"real_tokens_per_s": self.timed["real"] / t, "trained_tokens_per_s": self.timed["trained"] / t,
                "padding_fraction": 1 - self.real / max(1, self.positions), "mfu": self.timed["flops"] / t / peak,
                "model_tflops": self.timed["flops"] / t / 1e12, "peak_mem_mb": self.peak_step_mb,
                "peak_total_mem_mb": self.peak_total_mb, "steps": self.step, "samples": self.samples,
                "train_s": self.total_s, "real_tokens_per_step": self.real / max(1, self.step),
                "train_loss_last": sum(v * n for v, n in tail) / max(1, sum(n for _, n in tail)),
                "eval_loss": self.eval_loss, "error": self.error, **self.settings}


def evaluate(model: Any, batches: list[Batch], device: str) -> Optional[float]:
    """Answers-only loss per trained token on held-out packed rows."""
    if not batches:
        return None
    model.eval()
    total = count = 0.0
    with torch.no_grad():
        for b in batches:
            loss = model(**{k: v.to(device) for k, v in b.tensors.items()}).loss
            total, count = total + float(loss) * b.trained, count + b.trained
    model.train()
    return total / max(1.0, count)


# ---------------------------------------------------------------- main
def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--preset", choices=["small", "7b"], default=None, help="default: small on cpu, 7b on cuda")
    ap.add_argument("--samples", type=int, default=None, help="training rows per run (default 64; 7b: 160)")
    ap.add_argument("--eval-samples", type=int, default=None, help="held-out rows scored at the end (default 8)")
    ap.add_argument("--max-seq-len", type=int, default=2048)
    ap.add_argument("--baseline-rows", type=int, default=2, help="rows per baseline batch")
    ap.add_argument("--packed-rows", type=int, default=0, help="packed rows per llama2ft batch (0: match tokens)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed first steps of each run")
    ap.add_argument("--time-budget", type=float, default=None, help="stop a run after this many timed seconds "
                    "(default 150; 0: none)")
    ap.add_argument("--schedule", choices=["auto", "interleaved", "sequential"], default="auto",
                    help="auto: interleaved on cpu, sequential on cuda")
    ap.add_argument("--data", default=None, help=f"community-format csv (default {SHARED_CSV}, else synthetic)")
    ap.add_argument("--synthetic", action="store_true", help="use generated rows even if the shared csv exists")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default os.cpu_count(); --quick: 1)")
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--log-every", type=float, default=20.0, help="progress line every this many seconds")
    ap.add_argument("--quick", action="store_true", help="tiny model and rows: a few-second smoke run")
    ap.add_argument("--kernels", choices=["auto", "liger", "none"], default="auto",
                    help="llama2ft run: Liger's fused kernels (auto: on CUDA when installed)")
    ap.add_argument("--grad-ckpt", choices=["auto", "true", "false"], default="auto",
                    help="llama2ft run: gradient checkpointing (auto: only if a step would not fit)")
    ap.add_argument("--packed-attention", default=None, help="llama2ft run: attention for packed rows "
                    "(default: what llama2ft-train picks on the device)")
    ap.add_argument("--out", default=None, help="also write the JSON result to this file")
    args = ap.parse_args(argv)
    big = args.device == "cuda"
    args.preset = "quick" if args.quick else (args.preset or ("7b" if big else "small"))
    args.max_seq_len = min(args.max_seq_len, 256) if args.quick else args.max_seq_len
    args.threads = args.threads or (1 if args.quick else os.cpu_count() or 1)  # tiny ops: threads only add waits
    args.samples = args.samples or (12 if args.quick else 160 if args.preset == "7b" else 64)
    args.eval_samples = args.eval_samples if args.eval_samples is not None else (4 if args.quick else 8)
    args.time_budget = args.time_budget if args.time_budget is not None else 150.0
    args.schedule = args.schedule if args.schedule != "auto" else ("sequential" if big else "interleaved")
    args.dtype = torch.bfloat16 if big else torch.float32
    args.attn = "flash_attention_2" if big and importlib.util.find_spec("flash_attn") else "sdpa"
    args.hidden, args.layers = PRESETS[args.preset]["hidden"], PRESETS[args.preset]["layers"]
    return args


def main(argv: Optional[list[str]] = None) -> dict[str, Any]:
    args = parse_args(argv)
    from transformers import AutoTokenizer

    start = time.perf_counter()
    torch.set_num_threads(args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device visible")
    warnings.filterwarnings("ignore", category=FutureWarning)  # transformers 5 renames (checkpointing)
    tok = AutoTokenizer.from_pretrained(str(REPO / "data" / "tokenizer"))
    tok.model_max_length = 10 ** 9  # long rows are truncated here, after encoding; no tokenizer warning
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.unk_token_id
    samples, data_label = load_samples(args, tok)
    held, train = samples[: args.eval_samples], samples[args.eval_samples: args.eval_samples + args.samples]
    base = baseline_batches(train, args.baseline_rows, pad_id, args.seed)
    mean_positions = sum(b.tensors["input_ids"].numel() for b in base) / len(base)
    rows = args.packed_rows or max(1, round(mean_positions / args.max_seq_len))
    args.packed_attention = args.packed_attention or packed_attention(args.device == "cuda")
    ours = packed_batches(train, rows, args.max_seq_len, pad_id, args.seed,
                          packed_row_multiple(args.packed_attention))
    evals = packed_batches(held, 1, args.max_seq_len, pad_id, args.seed, packed_row_multiple(args.packed_attention))
    log(f"data: {data_label}; {len(train)} training rows ({sum(len(s[0]) for s in train):,} tokens after truncation "
        f"at {args.max_seq_len}), {len(held)} held out; baseline {len(base)} batches of {args.baseline_rows} rows, "
        f"llama2ft {len(ours)} batches of {rows} packed rows")
    peak = matmul_peak(args.device, 8192 if args.device == "cuda" else (512 if args.quick else 2048))
    name = torch.cuda.get_device_name() if args.device == "cuda" else f"cpu x{args.threads} threads"
    log(f"device: {name}; preset {args.preset}; attention {args.attn}; matmul peak {peak / 1e12:.3f} TFLOP/s")

    runs = [Run("baseline", base, args, len(tok)), Run("llama2ft", ours, args, len(tok))]
    init_eval: Optional[float] = None
    for group in ([[r] for r in runs] if args.schedule == "sequential" else [runs]):
        for r in group:
            try:
                r.setup()
            except torch.OutOfMemoryError:
                r.error, r.model, r.opt = "out of memory building the model", None, None
                gc.collect()
        if init_eval is None and group[0].model is not None:
            init_eval = evaluate(group[0].model, evals, args.device)
        while any(r.active() for r in group):
            min((r for r in group if r.active()), key=Run.progress).do_step()
        for r in group:
            if r.model is not None and r.step < len(r.batches) and r.error is None:
                log(f"[{r.name}] time budget reached after {r.step}/{len(r.batches)} steps")
            r.finish(evals)

    fb, fo = runs[0].figures(peak), runs[1].figures(peak)
    result: dict[str, Any] = {"speedup": fo["real_tokens_per_s"] / fb["real_tokens_per_s"]}
    result.update({f"baseline_{k}": v for k, v in fb.items()})
    result.update({f"llama2ft_{k}": v for k, v in fo.items()})
    result.update({"init_eval_loss": init_eval, "matmul_peak_tflops": peak / 1e12, "device": args.device,
                   "device_name": name, "preset": args.preset, "attention": args.attn, "data": data_label,
                   "samples": len(train), "max_seq_len": args.max_seq_len,
                   "baseline_rows_per_batch": args.baseline_rows,
                   "llama2ft_rows_per_batch": rows, "schedule": args.schedule,
                   "wall_s": time.perf_counter() - start})
    result = {k: (round(v, 4) if math.isfinite(v) else None) if isinstance(v, float) else v for k, v in result.items()}
    print_table(fb, fo, result)
    print(json.dumps(result, ensure_ascii=False), flush=True)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    return result


def print_table(fb: dict[str, Any], fo: dict[str, Any], r: dict[str, Any]) -> None:
    def fmt(v: Any) -> str:
        return "-" if v is None else f"{v:,.4g}" if isinstance(v, float) else str(v)

    log(f"\n{'':28}{'baseline':>22}{'llama2ft':>22}")
    for key in fb:
        log(f"{key:28}{fmt(fb[key]):>22}{fmt(fo[key]):>22}")
    log(f"speedup (real tokens/s): {fmt(r['speedup'])}; untrained eval loss {fmt(r['init_eval_loss'])}; "
        f"wall {r['wall_s']:.0f}s")


if __name__ == "__main__":
    main()
