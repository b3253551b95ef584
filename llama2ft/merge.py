"""llama2ft-merge: fold LoRA adapters into their base model and write a stock transformers folder.

    llama2ft-merge run=outputs/train/2024-01-01_00-00-00 output=merged
    llama2ft-merge base=/models/llama2-7b-chat adapters=[a1,a2] output=merged dtype=bfloat16

The merge streams a block of rows at a time, on several threads (see `publishing.merge`). Before the
output appears, logits of the merged model are checked against base+adapter (peft).
"""
from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path

import torch
from omegaconf import DictConfig

from llama2ft.config.hydra_app import hydra_command
from llama2ft.core.errors import ConfigError, UserError
from llama2ft.core.files import atomic_dir
from llama2ft.data.chat_formats import publish_template
from llama2ft.data.dialogue import Turn
from llama2ft.model.loading import DTYPES, open_tokenizer, save_tokenizer
from llama2ft.model.rope import ROPE_TYPES, scaling_of
from llama2ft.model.run_folder import RunDir, write_chat_meta
from llama2ft.publishing.merge import Inputs, check_fits, inputs_from_paths, inputs_from_run, is_scorer, \
    merge_workers, read_adapter, write_config, write_weights
from llama2ft.publishing.model_card import EXAMPLE, CardInfo, write_card
from llama2ft.publishing.safetensors_stream import base_tensors, parse_size
from llama2ft.publishing.verify import TOLERANCE, prompt_ids, prompt_template, verify


def resolve_inputs(cfg: DictConfig) -> Inputs:
    """Base, adapters, tokenizer and template from `run=` or from `base=`/`adapters=`."""
    problems = []
    if cfg.run is None and cfg.base is None:
        problems.append("give run=RUN_DIR (a training run) or base=PATH adapters=[A,...]")
    if cfg.run is not None and (cfg.base is not None or cfg.adapters):
        problems.append("run= already names base and adapter; do not combine it with base=/adapters=")
    scaling = scaling_of(cfg.get("rope_scaling"))
    if cfg.run is not None and scaling is not None:
        problems.append("rope_scaling= is for base=/adapters=; a run= merge uses the run's model.rope_scaling")
    if scaling is not None and (scaling["rope_type"] not in ROPE_TYPES or scaling["factor"] <= 1):
        problems.append(f"rope_scaling: rope_type must be one of {', '.join(ROPE_TYPES)} and factor > 1")
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
        return inputs_from_run(Path(cfg.run).expanduser())
    return inputs_from_paths(str(cfg.base), list(cfg.adapters), cfg.tokenizer, cfg.template, cfg.system, scaling)


def run_merge(cfg: DictConfig) -> Path:
    inp = resolve_inputs(cfg)
    output = Path(cfg.output).expanduser().resolve()
    if output.exists() and not cfg.overwrite:
        raise UserError(f"{output} already exists; pass overwrite=true to replace it")
    dtype_name = cfg.dtype or ("float32" if inp.tiny else "float16")
    dtype = getattr(torch, dtype_name)
    base = base_tensors(inp.base)
    adapters = [read_adapter(a) for a in inp.adapters]
    layout = check_fits(adapters, base)
    tok = open_tokenizer(str(inp.tokenizer))
    template = prompt_template(inp.template, inp.system)
    for note in publish_template(tok, template):  # the tokenizer's chat_template: the training template
        print(note, flush=True)

    with atomic_dir(output, exists="replace" if cfg.overwrite else "error") as tmp:
        started = time.perf_counter()
        shards = write_weights(layout, adapters, tmp, dtype, parse_size(str(cfg.max_shard_size)))
        print(f"weights: {shards} shard(s) in {time.perf_counter() - started:.1f} s ({merge_workers()} threads)",
              flush=True)
        write_config(inp.base, layout, tmp, dtype_name, tok, inp.rope_scaling)
        save_tokenizer(tok, tmp)
        write_chat_meta(tmp, inp.template, inp.system)
        if inp.run is not None and RunDir(inp.run).provenance.is_file():  # what made it travels with the weights
            shutil.copyfile(RunDir(inp.run).provenance, tmp / RunDir.PROVENANCE)
        ids = prompt_ids(inp.template, inp.system, tok)
        card = CardInfo(base=str(cfg.base_name or _base_name(inp)), adapters=[str(a) for a in inp.adapters],
                        dtype=dtype_name, run=inp.run, run_cfg=inp.run_cfg, template=inp.template,
                        system=inp.system, example_prompt=template.prompt([Turn("human", EXAMPLE)], tok),
                        output_name=output.name, folder=tmp)
        write_card(card, tmp / "README.md")
        if cfg.verify:
            diff, tol = verify(inp.base, inp.adapters, tmp, ids, layout["model.embed_tokens.weight"].shape[0],
                               TOLERANCE[dtype_name], inp.rope_scaling, is_scorer(layout))
            print(f"verified: max |logit diff| {diff:.3g} (tolerance {tol:.3g}) on {len(ids)} prompts", flush=True)
        else:
            print("verify=false: the merged logits were not checked against base+adapter", flush=True)
    print(f"merged {len(inp.adapters)} adapter(s) into {inp.base} -> {output} ({dtype_name}, {shards} shard(s))",
          flush=True)
    return output


def _base_name(inp: Inputs) -> str:
    if inp.run_cfg is not None and inp.run_cfg.model.name_or_path:
        return str(inp.run_cfg.model.name_or_path)
    return str(inp.base) if not inp.tiny else "llama2ft tiny random-init Llama (base_model/ of the run)"


main = hydra_command("merge", run_merge, from_store=True)

if __name__ == "__main__":
    sys.exit(main())
