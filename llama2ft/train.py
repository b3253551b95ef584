"""llama2ft-train: fine-tune a Llama-2 model as the composed config says (see configs/train.yaml).

Works the same on one CPU, one GPU or many processes under `accelerate launch` / `torchrun`; with `-m`
each job of a sweep is one run, and the sweep's summary is rewritten after every job.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

from llama2ft.config.hydra_app import hydra_command
from llama2ft.config.preference_start import default_sft_config
from llama2ft.config.validation import validate
from llama2ft.core.errors import UserError
from llama2ft.training import distributed, sweeps
from llama2ft.training.preference_start import needs_tiny_sft, tiny_sft_run
from llama2ft.training.recipe import run_training, say


def run_train(cfg: DictConfig) -> Optional[float]:
    """One training run (or one job of a sweep); returns the objective a sweeper minimizes."""
    from hydra.types import RunMode

    out_dir = Path(HydraConfig.get().runtime.output_dir)
    if HydraConfig.get().mode == RunMode.MULTIRUN:
        return _sweep_job(cfg, out_dir)
    validate(cfg)
    _start_from_tiny_sft(cfg, out_dir)
    return run_training(cfg, out_dir, cfg.trainer.resume).get(cfg.objective)


def _start_from_tiny_sft(cfg: DictConfig, out_dir: Path) -> None:
    """`method=dpo` (or orpo) with no model and no init_from starts from the embedded SFT model."""
    if needs_tiny_sft(cfg):
        with open_dict(cfg):
            cfg.init_from = str(tiny_sft_run(cfg, default_sft_config(cfg.trainer.seed), out_dir))


def _sweep_job(cfg: DictConfig, out_dir: Path) -> Optional[float]:
    """Bad input fails this job only; a rerun skips completed jobs and resumes unfinished ones."""
    try:
        validate(cfg)
        _start_from_tiny_sft(cfg, out_dir)
        metrics = sweeps.finished_run(cfg, out_dir)
        if metrics is not None:
            say(f"{out_dir}: already completed with this config, skipping")
        else:
            # not written into cfg: the saved config.yaml must stay what the sweep asked for
            resume = cfg.trainer.resume or (out_dir / "checkpoints").is_dir()
            metrics = run_training(cfg, out_dir, resume)
        (out_dir / sweeps.FAILED_MARK).unlink(missing_ok=True)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        if distributed.is_main_process():
            (out_dir / sweeps.FAILED_MARK).write_text(f"{exc}\n", encoding="utf-8")
        metrics = {}
    if distributed.is_main_process():
        sweeps.write(Path(HydraConfig.get().sweep.dir), cfg.objective)
    return metrics.get(cfg.objective)


_hydra_main = hydra_command("train", run_train)


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
