"""The streaming merge behind `llama2ft-merge`: LoRA adapters read as plain tensors and folded into
the base weights a block of rows at a time on several threads (memory stays near the adapters plus a
few blocks per thread), written as sharded safetensors with the config and generation config that
stock transformers loads. The merge always goes into the full-precision base (an adapter trained with
quant=nf4/int8 is still plain LoRA A/B). DoRA adapters merge too: each row of W + scale * B @ A is
rescaled to its learned magnitude, row by row as in peft."""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Iterable, Optional

from omegaconf import DictConfig

from llama2ft.core.errors import UserError
from llama2ft.core.files import is_hub_id
from llama2ft.inference.sampling import Sampling
from llama2ft.model.rope import apply_rope_scaling
from llama2ft.model.run_folder import RunDir, check_adapter, read_run, tokenizer_source
from llama2ft.publishing.safetensors_stream import (Piece, Scratch, TensorInfo, copy_pieces, plan_shards, rows_of,
                                                    shard_names, tensor_nbytes, write_shard)

_PEFT_PREFIX = "base_model.model."
LM_HEAD, SCORE_HEAD = "lm_head.weight", "score.weight"  # heads an adapter may bring: a reward model's is `score`
KILL_HOOK = "LLAMA2FT_MERGE_KILL_AFTER_SHARDS"  # tests: SIGKILL ourselves mid-write


@dataclass
class Adapter:
    """One LoRA adapter as plain tensors, keyed by base weight names (e.g. `model.layers.0.self_attn.q_proj.weight`)."""

    path: Path
    deltas: dict[str, tuple[Any, Any, float]] = field(default_factory=dict)  # key -> (A, B, scale)
    magnitudes: dict[str, Any] = field(default_factory=dict)  # DoRA: key -> magnitude of each output row
    saved: dict[str, Any] = field(default_factory=dict)  # modules_to_save copies: key -> full weight


@dataclass
class Inputs:
    """What one merge combines, and the template the result is published with."""

    base: Path
    adapters: list[Path]
    tokenizer: Path
    run: Optional[Path]
    run_cfg: Optional[DictConfig]
    template: str
    system: Optional[str]
    tiny: bool
    rope_scaling: Optional[dict] = None  # set on the merged config (and on the base the check compares with)


def inputs_from_run(path: Path) -> Inputs:
    """Base, adapter, tokenizer and template of a finished training run."""
    run = read_run(path)
    if run.adapter is None:
        raise UserError(f"{run.path} has no {RunDir.ADAPTER}/ folder: the run is a full fine-tune ({RunDir.MODEL}/), "
                        "nothing to merge")
    check_adapter_dir(run.adapter)
    base = run.dir.base_model if run.tiny else resolve_base(run.base, run.cfg.model.get("revision"))
    return Inputs(base, [run.adapter], run.tokenizer, run.path, run.cfg, run.template, run.system, run.tiny,
                  run.rope_scaling)


def inputs_from_paths(base: str, adapters: list[str], tokenizer: Optional[str], template: str,
                      system: Optional[str], rope_scaling: Optional[dict] = None) -> Inputs:
    """A base folder (or cached hub id) and adapters applied in order."""
    paths = [Path(a).expanduser() for a in adapters]
    for a in paths:
        check_adapter_dir(a)
    base_path = resolve_base(base)
    tok = Path(tokenizer).expanduser() if tokenizer else Path(tokenizer_source(paths[-1], base_path))
    return Inputs(base_path, paths, tok, None, None, template, system, False, rope_scaling)


def resolve_base(name: str, revision: Optional[str] = None) -> Path:
    """A local folder as is; a hub id (e.g. meta-llama/Llama-2-7b-chat-hf) from the local HF cache."""
    path = Path(name).expanduser()
    if not is_hub_id(name):
        return path
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(name, revision=revision, local_files_only=True))
    except Exception:  # not cached (or no hub library): base_tensors() says what to do
        return path


def check_adapter_dir(path: Path) -> None:
    check_adapter(path)
    if not (path / "adapter_model.safetensors").is_file():
        raise UserError(f"{path} has no adapter_model.safetensors (an old .bin adapter? load and save it with peft)")


def _scale(cfg: dict, module: str) -> tuple[int, float]:
    """(r, scale) of one module, honouring rank_pattern/alpha_pattern like peft does."""
    def pick(pattern: dict, default: float) -> float:
        for key, value in (pattern or {}).items():
            if re.match(rf"(.*\.)?({key})$", module):
                return value
        return default

    r = int(pick(cfg.get("rank_pattern"), cfg["r"]))
    alpha = float(pick(cfg.get("alpha_pattern"), cfg["lora_alpha"]))
    return r, alpha / (r ** 0.5) if cfg.get("use_rslora") else alpha / r


def read_adapter(path: Path) -> Adapter:
    """The adapter's LoRA pairs and saved modules, keyed by the base weight they change."""
    import torch
    from safetensors.torch import load_file

    cfg = json.loads((path / "adapter_config.json").read_text())
    if cfg.get("peft_type") != "LORA":
        raise UserError(f"{path}: peft_type {cfg.get('peft_type')} is not LoRA; only LoRA adapters can be merged")
    unsupported = [k for k in ("trainable_token_indices", "target_parameters") if cfg.get(k)]
    if cfg.get("bias", "none") != "none" or cfg.get("fan_in_fan_out"):
        unsupported.append("bias/fan_in_fan_out")
    if unsupported:
        raise UserError(f"{path}: LoRA options {', '.join(unsupported)} are not supported by the streaming merge")
    pairs: dict[str, dict[str, Any]] = {}
    magnitudes: dict[str, Any] = {}
    adapter = Adapter(path)
    # Full copies of modules, by priority: `x.weight` is how peft saves a modules_to_save copy;
    # `x.modules_to_save[.default].weight` the same in other peft versions; `x.base_layer.weight` the
    # base weight of a LoRA-wrapped embedding/head that peft saved (it replaces the base's on load).
    # `x.original_module.weight` is the untrained base copy of a modules_to_save wrapper: not used.
    copies: list[dict[str, Any]] = [{}, {}, {}]
    for key, tensor in load_file(str(path / "adapter_model.safetensors")).items():
        name = key[len(_PEFT_PREFIX):] if key.startswith(_PEFT_PREFIX) else key
        parts = [p for p in name.split(".") if p != "default"]
        if "original_module" in parts:
            continue
        if "lora_magnitude_vector" in parts:
            magnitudes[".".join(parts[:parts.index("lora_magnitude_vector")])] = tensor.to(torch.float32)
        elif "lora_A" in parts or "lora_B" in parts:
            which = "A" if "lora_A" in parts else "B"
            i = parts.index(f"lora_{which}")
            pairs.setdefault(".".join(parts[:i]), {})[which] = tensor.to(torch.float32)
        elif "lora_embedding_A" in parts or "lora_embedding_B" in parts:
            raise UserError(f"{path}: LoRA on embeddings ({key}) is not supported; use modules_to_save")
        else:
            rank = 1 if "modules_to_save" in parts else 2 if "base_layer" in parts else 0
            clean = [p for p in parts if p not in ("modules_to_save", "base_layer")]
            copies[rank][".".join(clean)] = tensor
    adapter.saved = {**copies[2], **copies[1], **copies[0]}
    for module, ab in pairs.items():
        if set(ab) != {"A", "B"}:
            raise UserError(f"{path}: {module} has lora_{'A' if 'A' in ab else 'B'} but not its partner")
        r, scale = _scale(cfg, module)
        adapter.deltas[f"{module}.weight"] = (ab["A"], ab["B"], scale)
    for module, magnitude in magnitudes.items():
        if module not in pairs:
            raise UserError(f"{path}: {module} has a DoRA magnitude but no lora_A/lora_B")
        adapter.magnitudes[f"{module}.weight"] = magnitude
    return adapter


def check_fits(adapters: list[Adapter], base: dict[str, TensorInfo]) -> dict[str, TensorInfo]:
    """Output tensor layout: the base's, with resized embeddings/head from modules_to_save.
    Raises a UserError naming the first tensor that does not fit the base."""
    out = dict(base)
    for ad in adapters:
        for key, (a, b, _) in ad.deltas.items():
            if key not in out:
                raise UserError(f"adapter {ad.path} changes {key}, which the base model does not have "
                                "(an adapter of another architecture?)")
            shape = (b.shape[0], a.shape[1])
            if tuple(out[key].shape) != shape or a.shape[0] != b.shape[1]:
                raise UserError(f"adapter {ad.path}: {key} has LoRA B@A of shape {list(shape)} but the base weight is "
                                f"{list(out[key].shape)} (an adapter of another architecture?)")
            if key in ad.magnitudes and tuple(ad.magnitudes[key].shape) != shape[:1]:
                raise UserError(f"adapter {ad.path}: {key} has a DoRA magnitude of {ad.magnitudes[key].shape[0]} rows "
                                f"but the weight has {shape[0]}")
        for key, tensor in ad.saved.items():
            if key not in out:
                if key not in (LM_HEAD, SCORE_HEAD):
                    raise UserError(f"adapter {ad.path} saves {key}, which the base model does not have")
                out[key] = TensorInfo(out["model.embed_tokens.weight"].dtype, list(tensor.shape), None, 0, 0)
            if tuple(out[key].shape[1:]) != tuple(tensor.shape[1:]) or tensor.shape[0] < out[key].shape[0]:
                raise UserError(f"adapter {ad.path}: saved {key} has shape {list(tensor.shape)} but the base "
                                f"has {list(out[key].shape)} (an adapter of another architecture?)")
            out[key] = TensorInfo(out[key].dtype, list(tensor.shape), out[key].file, out[key].start, out[key].end)
    if is_scorer(out):  # a reward model's adapter on a causal LM: the scorer it makes has no LM head
        out.pop(LM_HEAD, None)
    rows = {k: out[k].shape[0] for k in ("model.embed_tokens.weight", "lm_head.weight") if k in out}
    if len(set(rows.values())) > 1:
        raise UserError(f"after the adapters, embed_tokens has {rows['model.embed_tokens.weight']} rows but lm_head "
                        f"{rows['lm_head.weight']}: an adapter resized one without the other")
    return out


def is_scorer(layout: dict[str, TensorInfo]) -> bool:
    """Whether the merged model is a scorer (a sequence-classification model: a reward model)."""
    return SCORE_HEAD in layout


# ---------------------------------------------------------------- merge
_BLOCK = 1 << 18  # elements of one block of rows: 1 MB of float32, stays in (L2) cache


def add_lora_(w: Any, a: Any, b: Any, scale: float, magnitude: Optional[Any] = None,
              work: Optional[Any] = None) -> None:
    """w += scale * B @ A, in place, a block of rows at a time: each block is summed in float32 (in
    `work`, a reused float32 buffer of at least `_BLOCK` elements or one row: fresh memory per block costs
    page faults) and rounded once to w's dtype, and stays in cache (no float32 copy of the whole weight).
    With a DoRA `magnitude`, each row of the sum is then rescaled to that row's magnitude (a row's norm
    needs only that row, so this stays block by block)."""
    import torch

    step = max(1, _BLOCK // max(1, w.shape[1]))
    work = torch.empty(step * w.shape[1], dtype=torch.float32) if work is None else work
    for i in range(0, w.shape[0], step):
        rows = w[i:i + step]
        acc = rows if rows.dtype == torch.float32 else work[:rows.numel()].view(rows.shape).copy_(rows)
        acc.addmm_(b[i:i + step], a, alpha=scale)
        if magnitude is not None:
            acc.mul_((magnitude[i:i + step] / torch.linalg.norm(acc, dim=1)).unsqueeze(1))
        if acc is not rows:
            rows.copy_(acc)


def tensor_pieces(key: str, info: TensorInfo, adapters: list[Adapter], dtype: Any) -> Iterable[Piece]:
    """One output tensor as pieces: a base tensor no adapter changes, already in `dtype`, is copied
    unchanged; any other is made a block of rows at a time (`merged_rows`), blocks of the fold's size."""
    if info.file is not None and info.dtype == str(dtype).removeprefix("torch.") and \
            not any(key in ad.deltas or key in ad.saved for ad in adapters):
        yield from copy_pieces(key, info)
        return
    rows, width = rows_of(info)
    step = max(1, _BLOCK // max(1, width))
    row_bytes = width * dtype.itemsize
    for lo in range(0, rows, step):
        hi = min(rows, lo + step)
        yield Piece(key, lo * row_bytes, make=partial(merged_rows, key, info, adapters, dtype, lo, hi))


def merged_rows(key: str, info: TensorInfo, adapters: list[Adapter], dtype: Any, lo: int, hi: int,
                scratch: Scratch) -> Any:
    """Rows [lo, hi) of one output tensor: base weight, then each adapter in order (saved copy replaces,
    LoRA adds), in `scratch`'s buffers (valid until its next call). Every step works row by row, so a
    block of rows is what the whole tensor would give in those rows."""
    import torch

    # an adapter's saved copy replaces everything before it: start from the last one (or the base)
    start = max((i for i, ad in enumerate(adapters) if key in ad.saved), default=-1)
    w = scratch.read_rows(info, lo, hi) if start < 0 and info.file is not None else None
    owned = w is not None  # a buffer of ours: safe to update in place
    for ad in adapters[max(start, 0):]:
        if key in ad.saved:
            w, owned = ad.saved[key][lo:hi], False
        if key in ad.deltas:
            if not owned or (w.dtype != torch.float32 and w.dtype != dtype):
                # add in the output dtype (one rounding, not two), or in float32 when w is
                to = w.dtype if w.dtype == torch.float32 else dtype
                w, owned = scratch.buffer("sum", tuple(w.shape), to).copy_(w), True
            a, b, scale = ad.deltas[key]
            magnitude = ad.magnitudes.get(key)
            add_lora_(w, a, b[lo:hi], scale, None if magnitude is None else magnitude[lo:hi],
                      scratch.buffer("fold", (max(_BLOCK, w.shape[1]),), torch.float32))
    if w is None:
        raise UserError(f"{key} is neither in the base nor in an adapter")
    if w.is_floating_point() and w.dtype != dtype:
        w = scratch.buffer("out", tuple(w.shape), dtype).copy_(w)
    return w


def merge_workers() -> int:
    """Threads that write the merged shards: torch's thread count (its default is the cores; it follows
    OMP_NUM_THREADS), at least 2 so that reading and writing overlap the fold, at most 8."""
    import torch

    return min(8, max(2, torch.get_num_threads()))


def write_weights(layout: dict[str, TensorInfo], adapters: list[Adapter], tmp: Path, dtype: Any,
                  max_shard: int, workers: Optional[int] = None) -> int:
    """Write the merged weights into `tmp` shard by shard; returns the number of shards."""
    import torch

    esize = torch.empty((), dtype=dtype).element_size()
    out_info = {k: (str(dtype).removeprefix("torch."), v.shape, tensor_nbytes(v, esize)) for k, v in layout.items()}
    shards = plan_shards(list(out_info.items()), max_shard)
    names = shard_names(len(shards))
    kill_after = int(os.environ.get(KILL_HOOK, "0"))
    weight_map, total = {}, 0
    for i, (keys, name) in enumerate(zip(shards, names)):
        pieces = (piece for k in keys for piece in tensor_pieces(k, layout[k], adapters, dtype))
        write_shard(tmp / name, {k: out_info[k] for k in keys}, pieces, workers or merge_workers())
        weight_map.update({k: name for k in keys})
        total += sum(out_info[k][2] for k in keys)
        if kill_after and i + 1 >= kill_after:
            import signal

            os.kill(os.getpid(), signal.SIGKILL)
    if len(shards) > 1:
        index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
        (tmp / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    return len(shards)


def write_config(base: Path, layout: dict[str, TensorInfo], tmp: Path, dtype_name: str, tok: Any,
                 rope_scaling: Optional[dict] = None) -> None:
    """config.json (dtype, vocab size, no quantization, the RoPE scaling the adapter trained with) and
    generation_config.json with chat's sampling; a scorer's config.json names its sequence-classification
    class, one output and the padding its score skips (stock AutoModelForSequenceClassification loads it)."""
    from transformers import AutoConfig, GenerationConfig

    config = apply_rope_scaling(AutoConfig.from_pretrained(str(base)), rope_scaling)
    config.dtype = dtype_name
    config.vocab_size = layout["model.embed_tokens.weight"].shape[0]
    if getattr(config, "quantization_config", None) is not None:
        del config.quantization_config
    if getattr(config, "tie_word_embeddings", False) and "lm_head.weight" in layout:
        config.tie_word_embeddings = False  # an adapter saved its own head: keep it
    config.use_cache = True
    if is_scorer(layout):
        family = (config.architectures or ["LlamaForCausalLM"])[0].removesuffix("ForCausalLM")
        config.architectures, config.num_labels = [f"{family}ForSequenceClassification"], 1
        config.pad_token_id = tok.pad_token_id
        config.save_pretrained(str(tmp))
        return  # it writes no text: no generation settings
    config.save_pretrained(str(tmp))
    GenerationConfig(**Sampling().generation_config(), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                     pad_token_id=tok.pad_token_id).save_pretrained(str(tmp))
