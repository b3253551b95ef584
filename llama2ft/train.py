"""llama2ft-train: fine-tune a Llama-2 model as the composed config says (see configs/train.yaml).

Works the same on one CPU, one GPU or many processes under `accelerate launch` / `torchrun`; with `-m`
each job of a sweep is one run, and the sweep's summary is rewritten after every job. The method
(`method=sft|dpo|orpo|simpo|kto|rm|grpo`) comes from the registry in llama2ft/training/methods/; every method
runs through the one skeleton in llama2ft/training/pipeline.py.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from llama2ft.config.hydra_app import hydra_command
from llama2ft.config.validation import validate
from llama2ft.core.errors import UserError
from llama2ft.data.pipeline import check_inputs
from llama2ft.model.run_folder import RunDir
from llama2ft.training import distributed, sweeps
from llama2ft.training.checks import training_problems
from llama2ft.training.disk_space import DiskFull
from llama2ft.training.distributed import say
from llama2ft.training.method import Method
from llama2ft.training.methods import get_method, register_schemas
from llama2ft.training.pipeline import run_training
from llama2ft.training.preemption import Interrupted
from llama2ft.training.start import (Start, embedded_sft_config, embedded_start_folder, from_init,
                                     needs_embedded_start, with_init_from)


def checked(cfg: DictConfig) -> Method:
    """The run's method, once every problem of the config (the method's and the start's too) is known."""
    validate(cfg, training_problems(cfg))
    return get_method(cfg.method.name)


def plan(cfg: DictConfig, out_dir: Path) -> tuple[DictConfig, Method, Start]:
    """The config the run trains with, its method and its start. A method that continues an SFT model, on the
    embedded default with no start, first trains (or reuses) the embedded SFT run beside `out_dir`."""
    method = checked(cfg)
    if needs_embedded_start(cfg, method.starts_from_sft):
        check_inputs(cfg.data, cfg.trainer.seed, method.rows)  # a bad pairs file fails before minutes of SFT
        sft = get_method("sft")
        sft_cfg = embedded_sft_config(cfg, OmegaConf.structured(sft.Settings))
        checked(sft_cfg)
        folder = embedded_start_folder(sft_cfg, out_dir)
        if RunDir(folder).is_finished():
            say(f"starting from the embedded SFT model {folder} (made by an earlier run)")
        else:
            say(f"method={method.name} on the embedded default: first the tiny SFT model ({folder}), "
                "as `llama2ft-train` makes it")
            folder.mkdir(parents=True, exist_ok=True)
            run_training(sft_cfg, sft, folder, resume="auto")
            say(f"\nnow method={method.name} from {folder}\n")
        cfg = with_init_from(cfg, folder)
    cfg, start = from_init(cfg)
    validate(cfg, method.problems(cfg))  # the config it trains with, now pointing at its start
    return cfg, method, start


def run_train(cfg: DictConfig) -> Optional[float]:
    """One training run (or one job of a sweep); returns the objective a sweeper minimizes."""
    from hydra.types import RunMode

    out_dir = Path(HydraConfig.get().runtime.output_dir)
    if HydraConfig.get().mode == RunMode.MULTIRUN:
        return _sweep_job(cfg, out_dir)
    cfg, method, start = plan(cfg, out_dir)
    return run_training(cfg, method, out_dir, cfg.trainer.resume, start).get(cfg.objective)


def _sweep_job(cfg: DictConfig, out_dir: Path) -> Optional[float]:
    """Bad input fails this job only; a rerun skips completed jobs and resumes unfinished ones. A stop signal
    or a full disk ends the whole sweep (the next jobs would meet them too), its summary written first."""
    run = RunDir(out_dir)
    try:
        cfg, method, start = plan(cfg, out_dir)
        metrics = sweeps.finished_run(cfg, out_dir)
        if metrics is not None:
            say(f"{out_dir}: already completed with this config, skipping")
        else:
            # not written into cfg: the saved config.yaml must stay what the sweep asked for
            resume = "true" if run.checkpoints.is_dir() else cfg.trainer.resume
            metrics = run_training(cfg, method, out_dir, resume, start)
        run.failed.unlink(missing_ok=True)
    except (Interrupted, DiskFull):
        if distributed.is_main_process():
            sweeps.write(Path(HydraConfig.get().sweep.dir), cfg.objective, cfg.objective_direction)
        raise
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        if distributed.is_main_process():
            run.failed.write_text(f"{exc}\n", encoding="utf-8")
        metrics = {}
    if distributed.is_main_process():
        sweeps.write(Path(HydraConfig.get().sweep.dir), cfg.objective, cfg.objective_direction)
    return metrics.get(cfg.objective)


register_schemas()
_hydra_main = hydra_command("train", run_train)


def main() -> None:
    sys.argv = [sys.argv[0], *distributed.pin_hydra_dirs(sys.argv[1:], "train")]
    try:
        _hydra_main()
    except Interrupted:  # every rank stopped at the same step: a clean teardown, then exit code 75
        distributed.teardown()
        raise
    except BaseException:
        distributed.teardown(clean=False)
        raise
    distributed.teardown()


if __name__ == "__main__":
    main()
