"""The fine-tuning recipe, top to bottom: check -> data -> model -> train -> save.

Works the same on one CPU, one GPU or many processes under `accelerate launch` / `torchrun`. The
training config has been validated (config layer) before `run_training` is called.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Optional

import torch
from omegaconf import DictConfig, OmegaConf

from llama2ft.core.errors import UserError
from llama2ft.core.files import atomic_dir
from llama2ft.data.encode import summary_line, write_stats
from llama2ft.data.pipeline import Prepared, prepare_data
from llama2ft.data.preview import describe_first, write_preview
from llama2ft.data.rows import read_rows
from llama2ft.data.templates import Template, get_template
from llama2ft.evaluation.heldout import exact_match_rate, greedy_answers, questions_from_dialogues
from llama2ft.model.attention import packed_attention, packed_row_multiple
from llama2ft.model.embeddings import embedding_module_names, resize_embeddings
from llama2ft.model.loading import (compute_dtype, count_parameters, load_model, load_tokenizer, quantization_config,
                                    quantized_layers, save_tokenizer)
from llama2ft.model.lora import (INITIAL_ADAPTER_DIR, apply_lora, changes_base, load_adapter, prepare_for_training,
                                 save_adapter, save_initial_adapter)
from llama2ft.model.rope import scaling_of
from llama2ft.model.tiny import build_tiny_base
from llama2ft.training import distributed
from llama2ft.training.arguments import training_arguments
from llama2ft.training.optimizer import optimizer_factory
from llama2ft.training.plots import plot_loss
from llama2ft.training.speed import SpeedPlan, peak_gpu_memory, plan_speed


def say(msg: str) -> None:
    if distributed.is_main_process():
        print(msg, flush=True)


def step_counter() -> Any:
    """A Trainer callback counting the optimizer steps this process runs (not those a checkpoint had)."""
    from transformers import TrainerCallback

    class StepCounter(TrainerCallback):
        count = 0

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.count += 1

    return StepCounter()


def check_run_dir(out_dir: Path, resume: bool) -> None:
    """Never overwrite a finished run or silently restart over another run's checkpoints."""
    finished = [p for p in ("adapter", "model", "metrics.json") if (out_dir / p).exists()]
    if finished:
        raise UserError(f"{out_dir} already holds a finished run ({', '.join(finished)}); "
                        "choose another hydra.run.dir")
    ckpt = out_dir / "checkpoints"
    if not resume and ckpt.is_dir() and any(ckpt.glob("checkpoint-*")):
        raise UserError(f"{out_dir} has checkpoints of an unfinished run: set trainer.resume=true to continue it, "
                        "or choose another hydra.run.dir")


def run_training(cfg: DictConfig, out_dir: Path, resume: bool) -> dict:
    """Train as the (validated) training config says; returns the run's metrics."""
    from transformers import Trainer
    from transformers.trainer_utils import get_last_checkpoint

    from llama2ft.data.collators import PackedCollator, PadCollator

    if cfg.method.name != "sft":  # preference tuning on pairs: its own flow, same run folder
        from llama2ft.training.preference_run import run_preference

        return run_preference(cfg, out_dir, resume)
    # 1. check everything that can be checked without a model
    distributed.check_backend()
    check_run_dir(out_dir, resume)
    tokenizer = load_tokenizer(cfg.model)
    template = get_template(cfg.template.name, cfg.template.system)

    # 2. data: checked and tokenized by the main process first, the other ranks read its cache
    with distributed.main_process_first():
        prepared = prepare_data(cfg.data, template, tokenizer, cfg.trainer.seed)
    if distributed.is_main_process():
        OmegaConf.save(cfg, out_dir / "config.yaml", resolve=True)
        write_stats(prepared.stats, out_dir)
        write_preview(prepared.preview, out_dir)
    say(summary_line(prepared.stats))
    say(describe_first(tokenizer, prepared.preview))

    # 3. model
    model, base_path, dtype, speed = _model(cfg, tokenizer, out_dir)
    trainable, total = count_parameters(model)
    quantized = quantized_layers(model)
    say(f"model: {base_path} ({total:,} parameters, {trainable:,} trainable, {dtype}, quant={cfg.quant.mode}"
        + (f": {', '.join(f'{n} {kind}' for kind, n in quantized.items())})" if quantized else ")"))
    for line in speed.log_lines():
        say(line)
    before = _sample_eval(cfg, model, tokenizer, template, prepared, "before training")

    # 4. train
    args = training_arguments(cfg.trainer, cfg.logger, out_dir, prepared.eval is not None,
                              cfg.data.group_by_length and not cfg.data.packing,
                              checkpointing=speed.checkpointing.enabled, liger=speed.liger)
    collator = (PackedCollator(tokenizer.pad_token_id, packed_row_multiple(speed.attention)) if cfg.data.packing
                else PadCollator(tokenizer.pad_token_id))
    steps = step_counter()
    trainer = Trainer(model=model, args=args, train_dataset=prepared.train, eval_dataset=prepared.eval,
                      data_collator=collator, processing_class=tokenizer, callbacks=[steps],
                      optimizer_cls_and_kwargs=optimizer_factory(args, cfg.trainer.loraplus_lr_ratio))
    resume_from = None
    if resume:
        resume_from = get_last_checkpoint(args.output_dir) if Path(args.output_dir).is_dir() else None
        say(f"resuming from {resume_from}" if resume_from else "trainer.resume=true but no checkpoint yet: "
            "starting from the beginning")
    started = time.time()
    result = trainer.train(resume_from_checkpoint=resume_from)
    metrics = dict(result.metrics)
    if prepared.eval is not None:
        metrics.update(trainer.evaluate())
    metrics["wall_seconds"] = round(time.time() - started, 2)
    metrics["trainable_parameters"] = trainable
    metrics["steps_this_run"] = steps.count  # fewer than max_steps when a run resumed from a checkpoint
    metrics["quantized_layers"] = quantized
    metrics.update({**speed.metrics(), **peak_gpu_memory()})
    after = _sample_eval(cfg, trainer.model, tokenizer, template, prepared, "after training")
    if before is not None and after is not None:
        metrics["exact_match_before"], metrics["exact_match_after"] = before, after

    # 5. save (main process only; atomically, so a crash never leaves a half-written adapter)
    if trainer.is_world_process_zero():
        _save(trainer, tokenizer, cfg, out_dir, metrics)
    distributed.barrier()
    return metrics


def _model(cfg: DictConfig, tokenizer: Any, out_dir: Path,
           adapter: Optional[str] = None) -> tuple[Any, str, torch.dtype, SpeedPlan]:
    """The base (built for the embedded default), resized to the tokenizer, with its LoRA adapter (a new
    one, or the trained `adapter` continuing to train), and the run's speed settings (decided before peft
    wraps it)."""
    dtype = compute_dtype(cfg.trainer.precision, cfg.trainer.use_cpu)
    if cfg.model.dtype != "auto":
        dtype = getattr(torch, cfg.model.dtype)
    base_path = cfg.model.name_or_path
    if base_path is None:
        with distributed.main_process_first():
            base_path = str(out_dir / "base_model")
            if distributed.is_main_process() and not (out_dir / "base_model" / "config.json").exists():
                build_tiny_base(cfg.model.init, tokenizer, out_dir / "base_model")
    on_gpu = torch.cuda.is_available() and not cfg.trainer.use_cpu
    attn = cfg.model.attn_implementation or (packed_attention(on_gpu) if cfg.data.packing else None)
    q = cfg.quant
    quant = quantization_config(q.mode, dtype, q.double_quant, q.compute_dtype)
    device = f"cuda:{distributed.local_rank()}" if quant is not None and on_gpu else None
    model = load_model(base_path, dtype, quant=quant, device=device, revision=cfg.model.revision,
                       trust_remote_code=cfg.model.trust_remote_code, attn_implementation=attn,
                       rope_scaling=scaling_of(cfg.model.rope_scaling))
    rope = getattr(model.config, "rope_parameters", None) or {}
    if rope.get("rope_type", "default") != "default":  # read back from the loaded model: what it really uses
        say(f"rope scaling: {rope['rope_type']} x{rope['factor']} (data.max_seq_len={cfg.data.max_seq_len})")
    speed = plan_speed(cfg, model, torch.device(f"cuda:{distributed.local_rank()}" if on_gpu else "cpu"))
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
        model = load_adapter(model, adapter, base_path, trainable=True)
    elif cfg.lora.enabled:
        model = apply_lora(model, cfg.lora, cfg.trainer.seed, also_save)
        if changes_base(cfg.lora) and distributed.is_main_process():
            save_initial_adapter(model, out_dir / INITIAL_ADAPTER_DIR)  # to save the trained one converted
    return model, base_path, dtype, speed


def _sample_eval(cfg: DictConfig, model: Any, tokenizer: Any, template: Template, prepared: Prepared,
                 when: str) -> Optional[float]:
    se = cfg.sample_eval
    if not se.enabled or not distributed.is_main_process():
        return None
    if cfg.data.format == "raw":  # plain texts have no questions
        return None
    dialogues = [turns for _, turns in read_rows(se.file, cfg.data).items] if se.file else prepared.eval_dialogues
    qas = questions_from_dialogues(dialogues, se.max_questions)
    if not qas:
        return None
    answers = greedy_answers(model, tokenizer, template, qas, se.max_new_tokens)
    model.train()
    accuracy = exact_match_rate(answers, qas)
    print(f"\nexact match {when}: {accuracy:.0%} on {len(qas)} held-out questions", flush=True)
    for qa, answer in list(zip(qas, answers))[: se.show]:
        mark = "✓" if answer.strip() == qa.reference.strip() else "✗"
        print(f"  {mark} Q: {qa.history[-1].text}\n    A: {answer!r}   (expected {qa.reference!r})", flush=True)
    return accuracy


def _save(trainer: Any, tokenizer: Any, cfg: DictConfig, out_dir: Path, metrics: dict) -> None:
    final = out_dir / ("adapter" if cfg.lora.enabled else "model")
    with atomic_dir(final) as tmp:
        if cfg.lora.enabled:
            save_adapter(trainer.model, tmp, out_dir / INITIAL_ADAPTER_DIR if changes_base(cfg.lora) else None)
        else:
            trainer.model.save_pretrained(tmp)
        save_tokenizer(tokenizer, tmp)
    save_tokenizer(tokenizer, out_dir / "tokenizer")
    plot_loss(trainer.state.log_history, out_dir / "loss.png")
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
    print(f"\nsaved {final}, metrics.json, loss.png in {out_dir}", flush=True)
    print(f"talk to it: llama2ft-chat run={out_dir}   (publish: llama2ft-merge run={out_dir} output=DIR)", flush=True)
    if "wandb" in cfg.logger.report_to and os.environ.get("WANDB_MODE") == "offline":
        print(f"wandb ran offline; upload with: wandb sync {out_dir}/wandb/offline-run-*", flush=True)
