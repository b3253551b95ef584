"""Value checks of the `method` group and `init_from` (collected with the other training checks)."""
from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from llama2ft.model.preference_loss import DPO_LOSS_TYPES, METHODS
from llama2ft.model.run_folder import is_run_folder


def preference_problems(cfg: DictConfig) -> list[str]:
    """Every problem of the method settings (an empty list when they are valid)."""
    p: list[str] = []
    m, d = cfg.method, cfg.data
    if m.name not in METHODS:
        return [f"method.name={m.name!r}: must be one of {', '.join(METHODS)}"]
    if m.name == "sft":
        if cfg.init_from is not None:
            p.append("init_from: only preference methods (method=dpo, method=orpo) start from another run; "
                     "for SFT set model.name_or_path")
        return p
    if m.beta <= 0:
        p.append(f"method.beta={m.beta}: must be > 0")
    if m.name == "dpo":
        if m.loss_type not in DPO_LOSS_TYPES:
            p.append(f"method.loss_type={m.loss_type!r}: must be one of {', '.join(DPO_LOSS_TYPES)}")
        if m.sft_weight < 0:
            p.append(f"method.sft_weight={m.sft_weight}: must be >= 0")
        if not 0 <= m.label_smoothing < 0.5:
            p.append(f"method.label_smoothing={m.label_smoothing}: must be in [0, 0.5)")
    if d.format != "dialogue":
        p.append(f"data.format={d.format!r} with method={m.name}: preference pairs are prompt/chosen/rejected "
                 "columns, not raw text")
    if d.packing:
        p.append(f"data.packing=true with method={m.name}: pairs are not packed; set data.packing=false")
    if cfg.init_from is not None:
        path = Path(cfg.init_from).expanduser()
        if not (is_run_folder(path) or (path / "config.json").is_file()):
            p.append(f"init_from={cfg.init_from!r}: not a training run folder (config.yaml) nor a model folder "
                     "(config.json)")
        elif cfg.model.name_or_path is not None and not is_run_folder(path):
            p.append("init_from and model.name_or_path both name a model: set one of them")
    return p
