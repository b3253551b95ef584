"""HF `TrainingArguments` from the trainer and logger config nodes (loggers through `report_to`)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from llama2ft.model.loading import compute_dtype
from llama2ft.model.run_folder import RunDir


def set_logger_env(logger: Any, out_dir: Path) -> None:
    """wandb/tensorboard settings the HF integrations read from the environment; an explicit
    environment setting wins."""
    if "wandb" in logger.report_to:
        if not os.environ.get("WANDB_MODE"):
            os.environ["WANDB_MODE"] = logger.wandb_mode
        os.environ.setdefault("WANDB_PROJECT", logger.project)
        os.environ.setdefault("WANDB_DIR", str(out_dir))
    if "tensorboard" in logger.report_to:
        os.environ.setdefault("TENSORBOARD_LOGGING_DIR", str(out_dir / "tensorboard"))


def finish_loggers(logger: Any) -> None:
    """End the run's wandb run: its history is flushed, and the next run of the same process (a sweep's next
    job) starts its own instead of logging into this one."""
    if "wandb" in logger.report_to:
        import wandb

        if wandb.run is not None:
            wandb.finish()


def training_arguments(trainer: Any, logger: Any, out_dir: Path, has_eval: bool, group_by_length: bool,
                       checkpointing: bool = False, liger: bool = False) -> Any:
    """`trainer`, `logger`: the config nodes; `group_by_length`: batch rows of similar length (never
    for packed rows, which are all about max_seq_len long); `checkpointing`: the decided gradient
    checkpointing (model.memory); `liger`: apply Liger's kernels (model.kernels) when training starts."""
    from transformers import TrainingArguments

    tr = trainer
    dtype = compute_dtype(tr.precision, tr.use_cpu)
    set_logger_env(logger, out_dir)
    return TrainingArguments(
        output_dir=str(RunDir(out_dir).checkpoints),
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
        activation_checkpointing=checkpointing,
        activation_checkpointing_kwargs={"use_reentrant": False} if checkpointing else None,
        use_liger_kernel=liger,
        torch_compile=tr.compile,
        logging_steps=tr.logging_steps,
        eval_strategy="steps" if has_eval else "no",
        eval_steps=tr.eval_steps,
        save_strategy="steps",
        save_steps=tr.save_steps,
        save_total_limit=None,  # rotated by training/checkpoints.py, only once the new checkpoint is complete
        seed=tr.seed,
        data_seed=tr.seed,
        dataloader_num_workers=tr.dataloader_num_workers,
        use_cpu=tr.use_cpu,
        report_to=list(logger.report_to) or "none",
        run_name=Path(out_dir).name,
        remove_unused_columns=False,
        train_sampling_strategy="group_by_length" if group_by_length else "random",
        ddp_find_unused_parameters=False,
        include_num_input_tokens_seen="non_padding",
        neftune_noise_alpha=tr.neftune_noise_alpha,  # the Trainer adds the noise in training forwards only
    )
