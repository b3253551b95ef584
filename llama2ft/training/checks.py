"""What `llama2ft-train` checks in a composed config besides config/validation.py's value checks: the method's
settings, the start (init_from), trainer.resume, trainer.stop_signals and objective_direction. One list, reported
with the others (`validate(cfg, training_problems(cfg))`) by llama2ft-train and by the studio as the user edits."""
from __future__ import annotations

from omegaconf import DictConfig

from llama2ft.training.checkpoints import resume_problems
from llama2ft.training.methods import method_problems
from llama2ft.training.preemption import signal_problems
from llama2ft.training.start import start_problems
from llama2ft.training.sweeps import direction_problems


def training_problems(cfg: DictConfig) -> list[str]:
    tr = cfg.trainer
    return (method_problems(cfg) + start_problems(cfg) + resume_problems(tr.resume) + signal_problems(tr.stop_signals)
            + direction_problems(cfg.objective_direction))
