"""llama2ft-train: the fine-tuning recipe, top to bottom: check -> data -> model -> train -> save.

Works the same on one CPU, one GPU or many processes under `accelerate launch` / `torchrun`.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Optional

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from llama2ft import CONFIG_DIR, distributed
from llama2ft.config import register_schema, validate
from llama2ft.dataset import summary_line, write_stats
from llama2ft.errors import UserError, exit_on_user_error
from llama2ft.prepare import Prepared, read_inputs, tokenize_inputs
from llama2ft.templates import get_template

log = logging.getLogger("llama2ft")


def say(msg: str) -> None:
    if distributed.is_main_process():
        print(msg, flush=True)


# ---------------------------------------------------------------- checks
def finished_sweep_run(cfg: DictConfig, out_dir: Path) -> Optional[dict]:
    """The metrics of a run this sweep already completed with the same resolved config, else None."""
    saved = out_dir / "config.yaml"
    if not (out_dir / "metrics.json").is_file() or not saved.is_file():
        return None
    if OmegaConf.to_container(OmegaConf.load(saved)) != OmegaConf.to_container(cfg, resolve=True):
        return None
    return json.loads((out_dir / "metrics.json").read_text(encoding="utf-8"))


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


# ---------------------------------------------------------------- trainer
def training_arguments(cfg: DictConfig, out_dir: Path, has_eval: bool) -> Any:
    from transformers import TrainingArguments

    from llama2ft.modeling import compute_dtype

    tr = cfg.trainer
    dtype = compute_dtype(tr.precision, tr.use_cpu)
    report_to = list(cfg.logger.report_to) or "none"
    if "wandb" in cfg.logger.report_to:
        if not os.environ.get("WANDB_MODE"):  # an explicit environment setting wins
            os.environ["WANDB_MODE"] = cfg.logger.wandb_mode
        os.environ.setdefault("WANDB_PROJECT", cfg.logger.project)
        os.environ.setdefault("WANDB_DIR", str(out_dir))
    if "tensorboard" in cfg.logger.report_to:
        os.environ.setdefault("TENSORBOARD_LOGGING_DIR", str(out_dir / "tensorboard"))
    import torch

    return TrainingArguments(
        output_dir=str(out_dir / "checkpoints"),
        learning_rate=tr.learning_rate,
        num_train_epochs=tr.num_train_epochs,
        max_steps=tr.max_steps,
        per_device_train_batch_size=tr.per_device_train_batch_size,
        per_device_eval_batch_size=tr.per_device_eval_batch_size,
        gradient_accumulation_steps=tr.gradient_accumulation_steps,
        warmup_steps=tr.warmup_ratio,  # a float in [0, 1) is a ratio of the total steps
        lr_scheduler_type=tr.lr_scheduler_type,
        weight_decay=tr.weight_decay,
        max_grad_norm=tr.max_grad_norm,
        optim=tr.optim,
        bf16=dtype == torch.bfloat16,
        fp16=dtype == torch.float16,
        activation_checkpointing=tr.gradient_checkpointing,
        activation_checkpointing_kwargs={"use_reentrant": False} if tr.gradient_checkpointing else None,
        logging_steps=tr.logging_steps,
        eval_strategy="steps" if has_eval else "no",
        eval_steps=tr.eval_steps,
        save_strategy="steps",
        save_steps=tr.save_steps,
        save_total_limit=tr.save_total_limit,
        seed=tr.seed,
        data_seed=tr.seed,
        dataloader_num_workers=tr.dataloader_num_workers,
        use_cpu=tr.use_cpu,
        report_to=report_to,
        run_name=Path(out_dir).name,
        remove_unused_columns=False,
        train_sampling_strategy="group_by_length" if cfg.data.group_by_length and not cfg.data.packing else "random",
        ddp_find_unused_parameters=False,
        include_num_input_tokens_seen="non_padding",
    )


# ---------------------------------------------------------------- recipe
def run_training(cfg: DictConfig, in_sweep: bool = False) -> dict:
    from transformers import Trainer
    from transformers.trainer_utils import get_last_checkpoint

    from llama2ft.collator import PadCollator
    from llama2ft.packing import PackedCollator
    from llama2ft.modeling import apply_lora, build_tiny_base, compute_dtype, count_parameters, \
        embedding_module_names, load_model, load_tokenizer, resize_embeddings

    # 1. check everything that can be checked without a model
    validate(cfg)
    out_dir = Path(HydraConfig.get().runtime.output_dir)
    resume = cfg.trainer.resume
    if in_sweep:  # rerunning a sweep skips completed runs and resumes unfinished ones
        done = finished_sweep_run(cfg, out_dir)
        if done is not None:
            say(f"{out_dir}: already completed with this config, skipping")
            return done
        # not written into cfg: the saved config.yaml must stay what the sweep asked for
        resume = resume or (out_dir / "checkpoints").is_dir()
    check_run_dir(out_dir, resume)
    train_rows, eval_rows = read_inputs(cfg)
    tokenizer = load_tokenizer(cfg.model)

    # 2. data, tokenized on the main process first
    with distributed.main_process_first():
        prepared = tokenize_inputs(cfg, tokenizer, train_rows, eval_rows)
    if distributed.is_main_process():
        OmegaConf.save(cfg, out_dir / "config.yaml", resolve=True)
        write_stats(prepared.stats, out_dir)
    say(summary_line(prepared.stats))

    # 3. model
    dtype = compute_dtype(cfg.trainer.precision, cfg.trainer.use_cpu)
    base_path = cfg.model.name_or_path
    if base_path is None:
        with distributed.main_process_first():
            base_path = str(out_dir / "base_model")
            if distributed.is_main_process() and not (out_dir / "base_model" / "config.json").exists():
                build_tiny_base(cfg.model, tokenizer, out_dir / "base_model")
    model = load_model(cfg, base_path, dtype)
    also_save: list[str] = []
    grown = resize_embeddings(model, len(tokenizer), cfg.model.resize_init)
    if grown:  # an extended tokenizer (llama2ft-vocab): the new rows must train
        also_save = [n for n in embedding_module_names(model) if n not in cfg.lora.modules_to_save]
        say(f"tokenizer has {len(tokenizer)} pieces, the model {grown[0]} embedding rows: embeddings and head "
            f"resized to {grown[1]} rows (new rows: model.resize_init={cfg.model.resize_init})"
            + (f"; training them in full (lora.modules_to_save += {also_save})" if cfg.lora.enabled and also_save
               else ""))
    if cfg.lora.enabled:
        model = apply_lora(model, cfg, also_save)
    trainable, total = count_parameters(model)
    say(f"model: {base_path} ({total:,} parameters, {trainable:,} trainable, {dtype}, quant={cfg.quant.mode})")

    template = get_template(cfg.template.name, cfg.template.system)
    before = _sample_eval(cfg, model, tokenizer, template, prepared, "before training")

    # 4. train
    args = training_arguments(cfg, out_dir, prepared.eval is not None)
    collator = (PackedCollator if cfg.data.packing else PadCollator)(tokenizer.pad_token_id)
    trainer = Trainer(model=model, args=args, train_dataset=prepared.train, eval_dataset=prepared.eval,
                      data_collator=collator, processing_class=tokenizer)
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
    after = _sample_eval(cfg, trainer.model, tokenizer, template, prepared, "after training")
    if before is not None and after is not None:
        metrics["exact_match_before"], metrics["exact_match_after"] = before, after

    # 5. save (main process only; atomically, so a crash never leaves a half-written adapter)
    if trainer.is_world_process_zero():
        _save(trainer, tokenizer, cfg, out_dir, metrics)
    distributed.barrier()
    return metrics


def _sample_eval(cfg, model, tokenizer, template, prepared: Prepared, when: str) -> Optional[float]:
    if not cfg.sample_eval.enabled or not distributed.is_main_process():
        return None
    from llama2ft.sample_eval import exact_match, greedy_answers, questions_from_dialogues

    rows = prepared.eval_rows
    if cfg.sample_eval.file:
        from llama2ft.dataset import read_rows

        rows = read_rows(cfg.sample_eval.file, cfg.data)
    if rows is None or cfg.data.format != "dialogue":
        return None
    qas = questions_from_dialogues([turns for _, turns in rows.items], cfg.sample_eval.max_questions)
    answers = greedy_answers(model, tokenizer, template, qas, cfg.sample_eval.max_new_tokens)
    model.train()
    accuracy = exact_match(answers, qas)
    print(f"\nexact match {when}: {accuracy:.0%} on {len(qas)} held-out questions", flush=True)
    for qa, answer in list(zip(qas, answers))[: cfg.sample_eval.show]:
        mark = "✓" if answer.strip() == qa.reference.strip() else "✗"
        print(f"  {mark} Q: {qa.history[-1].text}\n    A: {answer!r}   (expected {qa.reference!r})", flush=True)
    return accuracy


def _save(trainer: Any, tokenizer: Any, cfg: DictConfig, out_dir: Path, metrics: dict) -> None:
    from llama2ft.plots import plot_loss

    final = out_dir / ("adapter" if cfg.lora.enabled else "model")
    tmp = out_dir / f".{final.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    trainer.model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    tmp.rename(final)
    tokenizer.save_pretrained(out_dir / "tokenizer")
    plot_loss(trainer.state.log_history, out_dir / "loss.png")
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
    print(f"\nsaved {final}, metrics.json, loss.png in {out_dir}", flush=True)
    print(f"talk to it: llama2ft-chat run={out_dir}   (publish: llama2ft-merge run={out_dir} output=DIR)", flush=True)
    if "wandb" in cfg.logger.report_to and os.environ.get("WANDB_MODE") == "offline":
        print(f"wandb ran offline; upload with: wandb sync {out_dir}/wandb/offline-run-*", flush=True)


register_schema()


@hydra.main(config_path=str(CONFIG_DIR), config_name="train", version_base="1.3")
@exit_on_user_error
def _hydra_main(cfg: DictConfig) -> Optional[float]:
    from hydra.types import RunMode

    if HydraConfig.get().mode == RunMode.MULTIRUN:
        return _sweep_job(cfg)
    return run_training(cfg).get(cfg.objective)


def _sweep_job(cfg: DictConfig) -> Optional[float]:
    """One job of `llama2ft-train -m ...`: bad input fails this run only; the summary is rewritten after each."""
    from llama2ft import sweep

    out_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        metrics = run_training(cfg, in_sweep=True)
        (out_dir / sweep.FAILED_MARK).unlink(missing_ok=True)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        if distributed.is_main_process():
            (out_dir / sweep.FAILED_MARK).write_text(f"{exc}\n", encoding="utf-8")
        metrics = {}
    if distributed.is_main_process():
        sweep.write(Path(HydraConfig.get().sweep.dir), cfg.objective)
    return metrics.get(cfg.objective)


def main() -> None:
    sys.argv = [sys.argv[0], *distributed.pin_hydra_dirs(sys.argv[1:], "train")]
    try:
        _hydra_main()
    except BaseException:
        distributed.teardown(clean=False)
        raise
    distributed.teardown()


if __name__ == "__main__":
    main()
