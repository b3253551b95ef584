"""Correctness and cost checks of the GPU speed paths, on a Llama of 7B width with 2 layers (LoRA r 64):

* packed attention: for each attention that can train packed rows here (CUDA: flex_attention, masked sdpa,
  llama2ft_varlen_sdpa; CPU: the last two; flash_attention_2 when installed), the loss and LoRA gradients
  of one batch of packed rows equal those of each sample run alone (float32, TF32 off), and the time of a
  forward + backward pass of that batch in bf16 (which attention is fastest here);
* Liger kernels: the loss and LoRA gradients of the same batch with and without Liger's kernels
  (bf16, applied through transformers' integration), and the losses of 4 AdamW steps of each.

  python3 bench/gpu_checks.py --device cuda --out bench/results/gpu-checks.json
  .venv/bin/python bench/gpu_checks.py --device cpu --preset quick      # the same code on CPU, seconds
The last line printed is one JSON object.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from pathlib import Path
from typing import Any, Optional

import torch
import torch.nn.functional as F

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent))
sys.path.insert(0, str(BENCH))
from llama2ft.data.collators import PackedCollator  # noqa: E402
from llama2ft.data.packing import pack_columns  # noqa: E402
from llama2ft.data.templates import IGNORE_INDEX  # noqa: E402
from llama2ft.model.attention import flex_available, register  # noqa: E402
from llama2ft.model.kernels import liger_installed  # noqa: E402
from throughput_model import PRESETS, build_model  # noqa: E402

LENGTHS = [900, 300, 1500, 120, 640, 410, 96]  # two packed rows of at most 2048


def samples(vocab: int, scale: float, seed: int) -> list[list[int]]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(3, vocab, (max(8, int(n * scale)),), generator=gen).tolist() for n in LENGTHS]


def model_for(args: argparse.Namespace, attn: str, dtype: torch.dtype, liger: bool = False) -> torch.nn.Module:
    args.dtype = dtype
    model, _ = build_model(args, args.vocab, attn, "false", liger, tokens=0, lora_dropout=0.0)
    gen = torch.Generator().manual_seed(args.seed + 1)  # LoRA B starts at 0: give the adapter an effect
    for name, p in model.named_parameters():
        if "lora_B" in name:
            p.data.copy_(torch.randn(p.shape, generator=gen) * 0.02)
    model.base_model.model.config.use_cache = False
    return model


def token_losses(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Loss of every trained label position, flattened, in the batch's order."""
    logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits.float()
    labels = batch["labels"][..., 1:]
    loss = F.cross_entropy(logits[..., :-1, :].reshape(-1, logits.size(-1)), labels.reshape(-1),
                           ignore_index=IGNORE_INDEX, reduction="none")
    return loss[labels.reshape(-1) != IGNORE_INDEX]


def lora_grads(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    out = {n: p.grad.detach().float().clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return out


def max_rel(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return max(float((a[k] - b[k]).norm() / b[k].norm().clamp_min(1e-12)) for k in b)


def packed_batch(ids: list[list[int]], device: str) -> dict[str, torch.Tensor]:
    cols = pack_columns(ids, ids, capacity=2048)
    batch = PackedCollator(0)([{k: cols[k][i] for k in cols} for i in range(len(cols["input_ids"]))])
    return {k: v.to(device) for k, v in batch.items()}


def check_attention(args: argparse.Namespace, attn: str, ids: list[list[int]]) -> dict[str, Any]:
    """Packed losses and grads against each sample alone (float32), then bf16 forward+backward time."""
    dev = args.device
    model = model_for(args, "sdpa", torch.float32)
    alone = torch.cat([token_losses(model, {"input_ids": torch.tensor([x], device=dev),
                                            "labels": torch.tensor([[IGNORE_INDEX] + x[1:]], device=dev)})
                       for x in ids])
    alone.sum().backward()
    g_alone = lora_grads(model)
    model.base_model.model.config._attn_implementation = attn
    batch = packed_batch(ids, dev)
    packed = token_losses(model, batch)
    packed.sum().backward()
    g_packed = lora_grads(model)
    same_order = packed.numel() == alone.numel()
    gap = (packed.detach().sort().values - alone.detach().sort().values).abs().max() if same_order else None
    loss_gap = float(gap) if gap is not None else float("nan")
    del model
    model = model_for(args, attn, args.fast_dtype)
    times = []
    for _ in range(4 if dev == "cuda" else 2):  # the first call compiles (flex) or warms up
        sync(dev)
        t0 = time.perf_counter()
        model(**batch).loss.backward()
        model.zero_grad(set_to_none=True)
        sync(dev)
        times.append(time.perf_counter() - t0)
    return {"tokens_match": same_order, "max_token_loss_gap": loss_gap, "max_rel_grad_gap": max_rel(g_packed, g_alone),
            "equal": same_order and loss_gap < 1e-3 and max_rel(g_packed, g_alone) < 1e-3,
            "fwd_bwd_ms": round(1000 * min(times[1:]), 2), "first_call_ms": round(1000 * times[0], 1)}


def check_liger(args: argparse.Namespace, ids: list[list[int]], apply: bool = True) -> dict[str, Any]:
    """`apply=False` (no CUDA or no liger-kernel): both runs unfused, so the dry run exercises this code."""
    batch = packed_batch(ids, args.device)
    attn = args.attention_for_liger
    runs = {}
    for liger in (False, True):
        model = model_for(args, attn, args.fast_dtype, liger=liger and apply)
        loss = model(**batch).loss
        loss.backward()
        grads = lora_grads(model)
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-4)
        steps = []
        for _ in range(4):
            step_loss = model(**batch).loss
            step_loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            steps.append(round(float(step_loss), 5))
        runs[liger] = (float(loss), grads, steps)
        del model, opt
    (l0, g0, s0), (l1, g1, s1) = runs[False], runs[True]
    gap = abs(l1 - l0)
    return {"attention": attn, "loss_none": l0, "loss_liger": l1, "loss_gap": gap, "max_rel_grad_gap": max_rel(g1, g0),
            "step_losses_none": s0, "step_losses_liger": s1,
            "match": gap < 2e-2 * max(1.0, abs(l0)) and max_rel(g1, g0) < 5e-2}


def sync(device: str) -> None:
    torch.cuda.synchronize() if device == "cuda" else None


def main(argv: Optional[list[str]] = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cuda")
    ap.add_argument("--preset", choices=["quick", "7b-2layers"], default=None, help="default: 7b-2layers on cuda")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="also write the JSON result to this file")
    args = ap.parse_args(argv)
    cuda = args.device == "cuda"
    if cuda and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device visible")
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False  # float32 means float32
    args.preset = args.preset or ("7b-2layers" if cuda else "quick")
    args.vocab, args.max_seq_len = PRESETS[args.preset]["vocab"] or 256, 2048
    args.fast_dtype = torch.bfloat16 if cuda else torch.float32
    ids = samples(args.vocab, 1.0 if cuda else 0.05, args.seed)
    attns = [register(), "sdpa"] + (["flex_attention"] if cuda and flex_available() else [])
    attns += ["flash_attention_2"] if cuda and importlib.util.find_spec("flash_attn") else []
    result: dict[str, Any] = {"device": args.device, "device_name": torch.cuda.get_device_name() if cuda else "cpu",
                              "preset": args.preset, "torch": torch.__version__, "attention": {}}
    for attn in attns:
        try:
            result["attention"][attn] = check_attention(args, attn, ids)
        except Exception as exc:  # one broken path is a finding, not the end of the checks
            result["attention"][attn] = {"error": f"{type(exc).__name__}: {str(exc)[:300]}"}
        print(attn, result["attention"][attn], flush=True)
    timed = {a: r["fwd_bwd_ms"] for a, r in result["attention"].items() if r.get("equal")}
    result["fastest_exact_attention"] = min(timed, key=timed.get) if timed else None
    args.attention_for_liger = result["fastest_exact_attention"] or "sdpa"
    apply = cuda and liger_installed()
    try:
        result["liger"] = {**check_liger(args, ids, apply), "applied": apply}
    except Exception as exc:
        result["liger"] = {"error": f"{type(exc).__name__}: {str(exc)[:300]}", "applied": apply}
    print("liger", result["liger"], flush=True)
    print(json.dumps(result), flush=True)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    return result


if __name__ == "__main__":
    main()
