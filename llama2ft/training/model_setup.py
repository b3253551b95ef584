"""The model a run trains: its base (built for the embedded default), quantized as configured, resized
to the tokenizer, with its LoRA adapter (a new one, or a trained one that keeps training), and the speed
settings decided for it before peft wraps it."""
from __future__ import annotations

from typing import Any, Optional

import torch
from omegaconf import DictConfig

from llama2ft.core.errors import UserError
from llama2ft.model.attention import packed_attention
from llama2ft.model.embeddings import embedding_module_names, resize_embeddings
from llama2ft.model.loading import compute_dtype, load_model, quantization_config
from llama2ft.model.lora import apply_lora, changes_base, load_adapter, prepare_for_training, save_initial_adapter
from llama2ft.model.rope import scaling_of
from llama2ft.model.run_folder import RunDir, holds_scorer
from llama2ft.model.tiny import build_tiny_base
from llama2ft.training import distributed
from llama2ft.training.distributed import say
from llama2ft.training.speed import SpeedPlan, plan_speed


def on_gpu(cfg: DictConfig) -> bool:
    return torch.cuda.is_available() and not cfg.trainer.use_cpu


def train_device(cfg: DictConfig) -> torch.device:
    return torch.device(f"cuda:{distributed.local_rank()}" if on_gpu(cfg) else "cpu")


def build_model(cfg: DictConfig, tokenizer: Any, run: RunDir, adapter: Optional[str] = None,
                scorer: bool = False) -> tuple[Any, str, torch.dtype, SpeedPlan]:
    """(model, where its base came from, dtype, speed settings); `adapter`: a trained adapter that keeps
    training instead of a new one; `scorer`: a sequence-classification model with one output (a reward
    model, `Method.scorer`) instead of a causal LM."""
    dtype = compute_dtype(cfg.trainer.precision, cfg.trainer.use_cpu)
    if cfg.model.dtype != "auto":
        dtype = getattr(torch, cfg.model.dtype)
    base_path = cfg.model.name_or_path
    if base_path is None:
        with distributed.main_process_first():
            base_path = str(run.base_model)
            if distributed.is_main_process() and not (run.base_model / "config.json").exists():
                build_tiny_base(cfg.model.init, tokenizer, run.base_model)
    gpu = on_gpu(cfg)
    attn = cfg.model.attn_implementation or (packed_attention(gpu) if cfg.data.packing else None)
    q = cfg.quant
    quant = quantization_config(q.mode, dtype, q.double_quant, q.compute_dtype)
    device = f"cuda:{distributed.local_rank()}" if quant is not None and gpu else None
    if not scorer and holds_scorer(base_path):
        raise UserError(f"{base_path} is a reward model (method=rm): it has no LM head to train a causal LM from")
    if scorer:  # its new score head is drawn while loading: the same one on every rerun
        from transformers import set_seed

        set_seed(cfg.trainer.seed)
    model = load_model(base_path, dtype, quant=quant, device=device, revision=cfg.model.revision,
                       trust_remote_code=cfg.model.trust_remote_code, attn_implementation=attn,
                       rope_scaling=scaling_of(cfg.model.rope_scaling), scorer=scorer)
    if scorer:  # a scorer reads each row's last token that is not padding
        model.config.pad_token_id = tokenizer.pad_token_id
    rope = getattr(model.config, "rope_parameters", None) or {}
    if rope.get("rope_type", "default") != "default":  # read back from the loaded model: what it really uses
        say(f"rope scaling: {rope['rope_type']} x{rope['factor']} (data.max_seq_len={cfg.data.max_seq_len})")
    speed = plan_speed(cfg, model, train_device(cfg))
    model = prepare_for_training(model, quant is not None, speed.checkpointing.enabled)
    also_save: list[str] = []
    grown = resize_embeddings(model, len(tokenizer), cfg.model.resize_init)
    if grown:  # an extended tokenizer (llama2ft-vocab): the new rows must train
        also_save = [n for n in embedding_module_names(model) if n not in cfg.lora.modules_to_save]
        say(f"tokenizer has {len(tokenizer)} pieces, the model {grown[0]} embedding rows: embeddings and head "
            f"resized to {grown[1]} rows (new rows: model.resize_init={cfg.model.resize_init})"
            + (f"; training them in full (lora.modules_to_save += {also_save})" if cfg.lora.enabled and also_save
               else ""))
    if adapter is not None:
        model = load_adapter(model, adapter, base_path, trainable=True, scorer=scorer)
    elif cfg.lora.enabled:
        model = apply_lora(model, cfg.lora, cfg.trainer.seed, also_save, scorer)
        if changes_base(cfg.lora) and distributed.is_main_process():
            save_initial_adapter(model, run.initial_adapter)  # to save the trained one converted
    return model, base_path, dtype, speed
