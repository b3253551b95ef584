"""The training skeleton, top to bottom: check -> start -> data -> model -> train -> evaluate -> save.

Every method (SFT, DPO, ORPO, SimPO, KTO, ...) runs through here; what differs is the `Method` passed in
(training/method.py), which this module never imports by name. Works the same on one CPU, one GPU or many
processes under `accelerate launch` / `torchrun`. The config has been validated before `run_training`.
"""
from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Any, Optional

from omegaconf import DictConfig

from llama2ft.core.errors import UserError
from llama2ft.core.files import atomic_dir
from llama2ft.data.chat_formats import publish_template
from llama2ft.data.pipeline import prepare_data
from llama2ft.data.preview import describe_first, write_preview
from llama2ft.data.templates import get_template
from llama2ft.model.loading import count_parameters, load_tokenizer, quantized_layers, save_tokenizer
from llama2ft.model.lora import changes_base, save_adapter
from llama2ft.model.run_folder import RunDir, holds_scorer
from llama2ft.training import distributed, provenance
from llama2ft.training.answers import show_answers
from llama2ft.training.arguments import finish_loggers, training_arguments
from llama2ft.training.checkpoints import Checkpoints, resume_mode, resume_point, train
from llama2ft.training.disk_space import DiskSpace, save_estimate, undo_final_save
from llama2ft.training.distributed import say
from llama2ft.training.method import Method
from llama2ft.training.model_setup import build_model
from llama2ft.training.optimizer import optimizer_factory
from llama2ft.training.plots import plot_loss
from llama2ft.training.preemption import Preemption
from llama2ft.training.speed import peak_gpu_memory
from llama2ft.training.start import Start
from llama2ft.training.step_log import step_log


def check_run_dir(run: RunDir, resume: str) -> None:
    """Never overwrite a finished run or silently restart over another run's checkpoints."""
    finished = run.finished_parts()
    if finished:
        raise UserError(f"{run.path} already holds a finished run ({', '.join(finished)}); "
                        "choose another hydra.run.dir")
    if resume == "false" and run.has_checkpoints():
        raise UserError(f"{run.path} has checkpoints of an unfinished run: set trainer.resume=auto (the default) or "
                        "true to continue it, or choose another hydra.run.dir")


def step_counter() -> Any:
    """A Trainer callback counting the optimizer steps this process runs (not those a checkpoint had)."""
    from transformers import TrainerCallback

    class StepCounter(TrainerCallback):
        count = 0

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.count += 1

    return StepCounter()


def run_training(cfg: DictConfig, method: Method, out_dir: Path, resume: Any, start: Start = Start()) -> dict:
    """Train `method` as the (validated) config says; returns the run's metrics. `resume`: auto | true | false
    (trainer.resume). A stop signal ends it with `preemption.Interrupted` once its checkpoint is complete."""
    run = RunDir(out_dir)
    resume = resume_mode(resume)
    # 1. check everything that can be checked without a model
    distributed.check_backend()
    check_run_dir(run, resume)
    record = provenance.begin(cfg, run)  # provenance.json; a data file changed since the run it resumes/reruns: stop
    tokenizer = load_tokenizer(cfg.model)
    template = get_template(cfg.template.name, cfg.template.system)

    # 2. start: an earlier run's embedded base travels with its adapter
    if start.base_model is not None and distributed.is_main_process() and not run.base_model.exists():
        shutil.copytree(start.base_model, run.base_model)
    settings = ", ".join(f"{k}={v}" for k, v in cfg.method.items() if k != "name")
    say(f"method={method.name}" + (f" ({settings})" if settings else "")
        + (f", starting from {start.source}" if start.source else ""))

    # 3. data: checked and tokenized by the main process first, the other ranks read its cache
    with distributed.main_process_first():
        prepared = prepare_data(cfg.data, template, tokenizer, cfg.trainer.seed, method.rows)
    if distributed.is_main_process():
        run.write_config(cfg)
        run.write_stats(prepared.stats)
        write_preview(prepared.preview, run.preview)
        record.data_read(prepared.stats)
    say(method.rows.summary(prepared.stats))
    say(describe_first(tokenizer, prepared.preview))
    data = method.data(cfg, prepared, tokenizer)

    # 4. model
    model, base_path, dtype, speed = build_model(cfg, tokenizer, run, start.trained_adapter, method.scorer)
    trainable, total = count_parameters(model)
    quantized = quantized_layers(model)
    say(f"model: {base_path} ({total:,} parameters, {trainable:,} trainable, {dtype}, quant={cfg.quant.mode}"
        + (f": {', '.join(f'{n} {kind}' for kind, n in quantized.items())})" if quantized else ")")
        + (f"; continuing the adapter {start.trained_adapter}" if start.trained_adapter else ""))
    for line in speed.log_lines():
        say(line)
    data = method.before_training(cfg, model, data)
    questions = method.questions(cfg, data, cfg.sample_eval.max_questions)
    label = method.match_metric.replace("_", " ")
    before = method.evaluate(cfg, model, data, "before training")
    match_before = show_answers(cfg, model, tokenizer, template, questions, label, "before training")

    # 5. train: a stop signal ends it after the current step with a checkpoint; a checkpoint counts once it is
    #    complete; each save is checked against the disk's free space
    args = training_arguments(cfg.trainer, cfg.logger, out_dir, data.eval is not None, method.group_by_length(cfg),
                              checkpointing=speed.checkpointing.enabled, liger=speed.liger and method.fused_loss)
    steps, stop = step_counter(), Preemption(cfg.trainer.stop_signals)
    disk = DiskSpace(run, *save_estimate(model, full=not cfg.lora.enabled))
    callbacks = [steps, stop.callback(), disk.callback(), Checkpoints(run, cfg.trainer.save_total_limit).callback(),
                 step_log(run)]
    trainer = method.trainer_class()(
        model=model, args=args, train_dataset=data.train, eval_dataset=data.eval,
        data_collator=method.collator(tokenizer, speed.attention, cfg), processing_class=tokenizer, callbacks=callbacks,
        optimizer_cls_and_kwargs=optimizer_factory(args, cfg.trainer.loraplus_lr_ratio), **method.trainer_kwargs(cfg))
    resume_from = resume_point(run, resume)
    if distributed.is_main_process():
        run.write_state("training", resumed_from=str(resume_from) if resume_from else None)
    started = time.time()
    with stop.installed(), disk.guard("saving a checkpoint", disk.checkpoint_bytes):
        metrics = train(trainer, resume_from)
    if stop.stopped_at is not None:
        finish_loggers(cfg.logger)
        stop.end_run(run, trainer.state.max_steps)

    # 6. evaluate
    if data.eval is not None:
        metrics.update(trainer.evaluate())
    metrics.update(wall_seconds=round(time.time() - started, 2), trainable_parameters=trainable,
                   steps_this_run=steps.count,  # fewer than max_steps when a run resumed from a checkpoint
                   quantized_layers=quantized, method=method.name, **speed.metrics(), **peak_gpu_memory(),
                   **method.final_metrics(trainer.state.log_history))
    after = method.evaluate(cfg, trainer.model, data, "after training")
    for key in before:
        metrics[f"{key}_before"], metrics[f"{key}_after"] = before[key], after[key]
    match_after = show_answers(cfg, trainer.model, tokenizer, template, questions, label, "after training")
    if match_before is not None and match_after is not None:
        metrics[f"{method.match_metric}_before"], metrics[f"{method.match_metric}_after"] = match_before, match_after

    # 7. save (main process only; atomically, so a crash or a full disk never leaves a half-written adapter)
    final = run.adapter if cfg.lora.enabled else run.model
    disk.before_save(str(final), disk.final_bytes)  # on every rank: they agree
    if trainer.is_world_process_zero():
        with disk.guard(f"saving {final}", disk.final_bytes, undo=lambda: undo_final_save(run)):
            save_run(trainer, tokenizer, cfg, run, metrics, record)
    finish_loggers(cfg.logger)
    distributed.barrier()
    return metrics


def save_run(trainer: Any, tokenizer: Any, cfg: DictConfig, run: RunDir, metrics: dict,
             record: Optional[provenance.Provenance] = None) -> None:
    final = run.adapter if cfg.lora.enabled else run.model
    # the tokenizer travels with the template it trained with, as its chat_template
    for note in publish_template(tokenizer, get_template(cfg.template.name, cfg.template.system)):
        print(note, flush=True)
    with atomic_dir(final) as tmp:
        if cfg.lora.enabled:
            save_adapter(trainer.model, tmp, run.initial_adapter if changes_base(cfg.lora) else None)
        else:
            trainer.model.save_pretrained(tmp)
        save_tokenizer(tokenizer, tmp)
    save_tokenizer(tokenizer, run.tokenizer)
    plot_loss(run.read_log(), run.loss_plot)
    run.write_state("finished", step=trainer.state.global_step)
    if record is not None:
        record.complete()
    run.write_metrics(metrics)  # last: a run with metrics.json is finished
    print(f"\nsaved {final}, {RunDir.METRICS}, {RunDir.LOSS_PLOT} in {run.path}", flush=True)
    use = (f"score answers with it: llama2ft.training.reward_model.load_reward_model('{run.path}')"
           if holds_scorer(run.path) else f"talk to it: llama2ft-chat run={run.path}")
    print(f"{use}   (publish: llama2ft-merge run={run.path} output=DIR)", flush=True)
    if "wandb" in cfg.logger.report_to and os.environ.get("WANDB_MODE") == "offline":
        print(f"wandb ran offline; upload with: wandb sync {run.path}/wandb/offline-run-*", flush=True)
