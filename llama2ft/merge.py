"""llama2ft-merge: fold LoRA adapters into their base model and write a stock transformers folder.

    llama2ft-merge run=outputs/train/2024-01-01_00-00-00 output=merged
    llama2ft-merge base=/models/llama2-7b-chat adapters=[a1,a2] output=merged dtype=bfloat16

The merge streams: tensors are read one at a time from the base safetensors and written one at a
time into the output shards, so memory stays near one tensor plus the adapters. The merge always
goes into the full-precision base (an adapter trained with quant=nf4/int8 is still plain LoRA A/B).
Before the output appears, logits of the merged model are checked against base+adapter (peft).
"""
from __future__ import annotations

import json
import os
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import hydra
from omegaconf import DictConfig, OmegaConf

from llama2ft import CONFIG_DIR
from llama2ft.errors import ConfigError, UserError, exit_on_user_error
from llama2ft.modeling import open_tokenizer
from llama2ft.merge_verify import TOLERANCE, prompt_ids, verify
from llama2ft.runs import check_adapter, read_run, tokenizer_source
from llama2ft.templates import CHAT_META_FILE
from llama2ft.st_io import (TensorInfo, base_tensors, clean_stale, parse_size, plan_shards, publish,
                            read_tensor, shard_names, temp_dir_for, tensor_nbytes, write_shard)

DTYPES = ("float16", "bfloat16", "float32")
_PEFT_PREFIX = "base_model.model."
KILL_HOOK = "LLAMA2FT_MERGE_KILL_AFTER_SHARDS"  # tests: SIGKILL ourselves mid-write


@dataclass
class Adapter:
    """One LoRA adapter as plain tensors, keyed by base weight names (e.g. `model.layers.0.self_attn.q_proj.weight`)."""

    path: Path
    deltas: dict[str, tuple[Any, Any, float]] = field(default_factory=dict)  # key -> (A, B, scale)
    saved: dict[str, Any] = field(default_factory=dict)  # modules_to_save copies: key -> full weight


@dataclass
class Inputs:
    base: Path
    adapters: list[Path]
    tokenizer: Path
    run: Optional[Path]
    run_cfg: Optional[DictConfig]
    template: str
    system: Optional[str]
    tiny: bool


# ---------------------------------------------------------------- inputs
def resolve_inputs(cfg: DictConfig) -> Inputs:
    """Base, adapters, tokenizer and template from `run=` or from `base=`/`adapters=`."""
    problems = []
    if cfg.run is None and cfg.base is None:
        problems.append("give run=RUN_DIR (a training run) or base=PATH adapters=[A,...]")
    if cfg.run is not None and (cfg.base is not None or cfg.adapters):
        problems.append("run= already names base and adapter; do not combine it with base=/adapters=")
    if cfg.base is not None and not cfg.adapters:
        problems.append("base= needs adapters=[A,...] (at least one adapter folder)")
    if not cfg.output:
        problems.append("output=DIR is required")
    if cfg.dtype is not None and cfg.dtype not in DTYPES:
        problems.append(f"dtype={cfg.dtype!r} is unknown; choose one of {', '.join(DTYPES)}")
    try:
        parse_size(str(cfg.max_shard_size))
    except ValueError as exc:
        problems.append(f"max_shard_size: {exc}")
    if problems:
        raise ConfigError(problems)
    if cfg.run is not None:
        return _from_run(Path(cfg.run).expanduser())
    adapters = [Path(a).expanduser() for a in cfg.adapters]
    for a in adapters:
        _check_adapter_dir(a)
    base = resolve_base(str(cfg.base))
    tok = Path(cfg.tokenizer).expanduser() if cfg.tokenizer else Path(tokenizer_source(adapters[-1], base))
    return Inputs(base, adapters, tok, None, None, cfg.template, cfg.system, False)


def resolve_base(name: str, revision: Optional[str] = None) -> Path:
    """A local folder as is; a hub id (e.g. meta-llama/Llama-2-7b-chat-hf) from the local HF cache."""
    path = Path(name).expanduser()
    if path.exists() or name.count("/") != 1 or name.startswith((".", "/", "~")):
        return path
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(name, revision=revision, local_files_only=True))
    except Exception:  # not cached (or no hub library): base_tensors() says what to do
        return path


def _from_run(path: Path) -> Inputs:
    run = read_run(path)
    if run.adapter is None:
        raise UserError(f"{run.path} has no adapter/ folder: the run is a full fine-tune (model/), nothing to merge")
    _check_adapter_dir(run.adapter)
    base = run.path / "base_model" if run.tiny else resolve_base(run.base, run.cfg.model.get("revision"))
    return Inputs(base, [run.adapter], run.tokenizer, run.path, run.cfg, run.template, run.system, run.tiny)


def _check_adapter_dir(path: Path) -> None:
    check_adapter(path)
    if not (path / "adapter_model.safetensors").is_file():
        raise UserError(f"{path} has no adapter_model.safetensors (an old .bin adapter? load and save it with peft)")


def _scale(cfg: dict, module: str) -> tuple[int, float]:
    """(r, scale) of one module, honouring rank_pattern/alpha_pattern like peft does."""
    import re

    def pick(pattern: dict, default: float) -> float:
        for key, value in (pattern or {}).items():
            if re.match(rf"(.*\.)?({key})$", module):
                return value
        return default

    r = int(pick(cfg.get("rank_pattern"), cfg["r"]))
    alpha = float(pick(cfg.get("alpha_pattern"), cfg["lora_alpha"]))
    return r, alpha / (r ** 0.5) if cfg.get("use_rslora") else alpha / r


def load_adapter(path: Path) -> Adapter:
    """The adapter's LoRA pairs and saved modules, keyed by the base weight they change."""
    import torch
    from safetensors.torch import load_file

    cfg = json.loads((path / "adapter_config.json").read_text())
    if cfg.get("peft_type") != "LORA":
        raise UserError(f"{path}: peft_type {cfg.get('peft_type')} is not LoRA; only LoRA adapters can be merged")
    unsupported = [k for k in ("use_dora", "trainable_token_indices", "target_parameters") if cfg.get(k)]
    if cfg.get("bias", "none") != "none" or cfg.get("fan_in_fan_out"):
        unsupported.append("bias/fan_in_fan_out")
    if unsupported:
        raise UserError(f"{path}: LoRA options {', '.join(unsupported)} are not supported by the streaming merge")
    pairs: dict[str, dict[str, Any]] = {}
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
        if "lora_A" in parts or "lora_B" in parts:
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
        for key, tensor in ad.saved.items():
            if key not in out:
                if key != "lm_head.weight":
                    raise UserError(f"adapter {ad.path} saves {key}, which the base model does not have")
                out[key] = TensorInfo(out["model.embed_tokens.weight"].dtype, list(tensor.shape), None, 0, 0)
            if tuple(out[key].shape[1:]) != tuple(tensor.shape[1:]) or tensor.shape[0] < out[key].shape[0]:
                raise UserError(f"adapter {ad.path}: saved {key} has shape {list(tensor.shape)} but the base "
                                f"has {list(out[key].shape)} (an adapter of another architecture?)")
            out[key] = TensorInfo(out[key].dtype, list(tensor.shape), out[key].file, out[key].start, out[key].end)
    rows = {k: out[k].shape[0] for k in ("model.embed_tokens.weight", "lm_head.weight") if k in out}
    if len(set(rows.values())) > 1:
        raise UserError(f"after the adapters, embed_tokens has {rows['model.embed_tokens.weight']} rows but lm_head "
                        f"{rows['lm_head.weight']}: an adapter resized one without the other")
    return out


# ---------------------------------------------------------------- merge
def add_lora_(w: Any, a: Any, b: Any, scale: float) -> None:
    """w += scale * B @ A, in place, a block of rows at a time: each block is summed in float32 and
    rounded once to w's dtype, and stays in cache (no float32 copy of the whole weight)."""
    import torch

    step = max(1, (1 << 16) // max(1, w.shape[1]))  # 64K elements: 256 KB of float32 per block
    for i in range(0, w.shape[0], step):
        rows = w[i:i + step]
        acc = rows if rows.dtype == torch.float32 else rows.to(torch.float32)
        acc.addmm_(b[i:i + step], a, alpha=scale)
        if acc is not rows:
            rows.copy_(acc)


def merged_tensor(key: str, info: TensorInfo, adapters: list[Adapter], dtype: Any) -> Any:
    """One output tensor: base weight, then each adapter in order (saved copy replaces, LoRA adds)."""
    import torch

    # an adapter's saved copy replaces everything before it: start from the last one (or the base)
    start = max((i for i, ad in enumerate(adapters) if key in ad.saved), default=-1)
    w = read_tensor(info) if start < 0 and info.file is not None else None
    owned = w is not None  # a fresh buffer of ours: safe to update in place
    for ad in adapters[max(start, 0):]:
        if key in ad.saved:
            w, owned = ad.saved[key], False
        if key in ad.deltas:
            if w.dtype != torch.float32 and w.dtype != dtype:
                w, owned = w.to(dtype), True  # add in the output dtype: one rounding, not two
            elif not owned:
                w, owned = w.clone(), True
            a, b, scale = ad.deltas[key]
            add_lora_(w, a, b, scale)
    if w is None:
        raise UserError(f"{key} is neither in the base nor in an adapter")
    if w.is_floating_point() and w.dtype != dtype:
        w = w.to(dtype)
    return w.contiguous()


def write_weights(layout: dict[str, TensorInfo], adapters: list[Adapter], tmp: Path, dtype: Any,
                  max_shard: int) -> int:
    """Write the merged weights into `tmp` shard by shard; returns the number of shards."""
    import torch

    esize = torch.empty((), dtype=dtype).element_size()
    out_info = {k: (str(dtype).removeprefix("torch."), v.shape, tensor_nbytes(v, esize)) for k, v in layout.items()}
    shards = plan_shards(list(out_info.items()), max_shard)
    names = shard_names(len(shards))
    kill_after = int(os.environ.get(KILL_HOOK, "0"))
    weight_map, total = {}, 0
    for i, (keys, name) in enumerate(zip(shards, names)):
        shapes = {k: out_info[k] for k in keys}
        # one tensor at a time: written, then dropped before the next is read
        write_shard(tmp / name, shapes, (merged_tensor(k, layout[k], adapters, dtype) for k in keys))
        weight_map.update({k: name for k in keys})
        total += sum(out_info[k][2] for k in keys)
        if kill_after and i + 1 >= kill_after:
            import signal

            os.kill(os.getpid(), signal.SIGKILL)
    if len(shards) > 1:
        index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
        (tmp / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    return len(shards)



def write_config(inp: Inputs, layout: dict[str, TensorInfo], tmp: Path, dtype_name: str, tok: Any) -> None:
    """config.json (dtype, vocab size, no quantization) and generation_config.json with chat's sampling."""
    from transformers import AutoConfig, GenerationConfig

    config = AutoConfig.from_pretrained(str(inp.base))
    config.dtype = dtype_name
    config.vocab_size = layout["model.embed_tokens.weight"].shape[0]
    if getattr(config, "quantization_config", None) is not None:
        del config.quantization_config
    if getattr(config, "tie_word_embeddings", False) and "lm_head.weight" in layout:
        config.tie_word_embeddings = False  # an adapter saved its own head: keep it
    config.use_cache = True
    config.save_pretrained(str(tmp))
    GenerationConfig(do_sample=True, temperature=0.3, top_p=0.95, top_k=50, repetition_penalty=1.3,
                     max_new_tokens=512, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                     pad_token_id=tok.pad_token_id).save_pretrained(str(tmp))



# ---------------------------------------------------------------- app
def run_merge(cfg: DictConfig) -> Path:
    import torch

    from llama2ft.model_card import CardInfo, write_card

    inp = resolve_inputs(cfg)
    output = Path(cfg.output).expanduser().resolve()
    if output.exists() and not cfg.overwrite:
        raise UserError(f"{output} already exists; pass overwrite=true to replace it")
    dtype_name = cfg.dtype or ("float32" if inp.tiny else "float16")
    dtype = getattr(torch, dtype_name)
    base = base_tensors(inp.base)
    adapters = [load_adapter(a) for a in inp.adapters]
    layout = check_fits(adapters, base)
    tok = open_tokenizer(str(inp.tokenizer))

    output.parent.mkdir(parents=True, exist_ok=True)
    clean_stale(output)
    tmp = temp_dir_for(output)
    tmp.mkdir()
    try:
        shards = write_weights(layout, adapters, tmp, dtype, parse_size(str(cfg.max_shard_size)))
        write_config(inp, layout, tmp, dtype_name, tok)
        tok.save_pretrained(str(tmp))
        (tmp / CHAT_META_FILE).write_text(json.dumps({"template": inp.template, "system": inp.system},
                                                     ensure_ascii=False, indent=2), encoding="utf-8")
        ids = prompt_ids(inp.template, inp.system, tok)
        card = CardInfo(base=str(cfg.base_name or _base_name(inp)), adapters=[str(a) for a in inp.adapters],
                        dtype=dtype_name, run=inp.run, run_cfg=inp.run_cfg, template=inp.template,
                        system=inp.system, example_prompt=tok.decode(ids[0]), output_name=output.name)
        write_card(card, tmp / "README.md")
        if cfg.verify:
            diff, tol = verify(inp.base, inp.adapters, tmp, ids, layout["model.embed_tokens.weight"].shape[0],
                               TOLERANCE[dtype_name])
            print(f"verified: max |logit diff| {diff:.3g} (tolerance {tol:.3g}) on {len(ids)} prompts", flush=True)
        else:
            print("verify=false: the merged logits were not checked against base+adapter", flush=True)
        publish(tmp, output, bool(cfg.overwrite))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"merged {len(inp.adapters)} adapter(s) into {inp.base} -> {output} ({dtype_name}, {shards} shard(s))",
          flush=True)
    return output


def _base_name(inp: Inputs) -> str:
    if inp.run_cfg is not None and inp.run_cfg.model.name_or_path:
        return str(inp.run_cfg.model.name_or_path)
    return str(inp.base) if not inp.tiny else "llama2ft tiny random-init Llama (base_model/ of the run)"


def register_app_config(name: str) -> str:
    """Serve configs/<name>.yaml from Hydra's ConfigStore instead of the configs/ folder: there,
    `quant` and `template` are training config groups, and `quant=f16` would be taken as a group choice."""
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name=f"_{name}_app", node=OmegaConf.load(CONFIG_DIR / f"{name}.yaml"))
    return f"_{name}_app"


@hydra.main(config_path=None, config_name=register_app_config("merge"), version_base="1.3")
@exit_on_user_error
def _hydra_main(cfg: DictConfig) -> None:
    run_merge(cfg)


def main() -> None:
    _hydra_main()


if __name__ == "__main__":
    sys.exit(main())
