"""llama2ft-export: a merged Llama folder (llama2ft-merge output) as one GGUF file for llama.cpp.

    llama2ft-export format=gguf source=merged/my-model output=my-model.gguf quant=q8_0
"""
from __future__ import annotations

import sys
from pathlib import Path

from omegaconf import DictConfig

from llama2ft.config.hydra_app import hydra_command
from llama2ft.core.errors import ConfigError, UserError
from llama2ft.core.files import atomic_file
from llama2ft.publishing.gguf import QUANTS, write_gguf


def run_export(cfg: DictConfig) -> Path:
    problems = []
    if cfg.format != "gguf":
        problems.append(f"format={cfg.format!r} is unknown; only gguf is supported")
    if not cfg.source:
        problems.append("source=MERGED_DIR is required (the output of llama2ft-merge)")
    if not cfg.output:
        problems.append("output=FILE.gguf is required")
    if cfg.quant not in QUANTS:
        problems.append(f"quant={cfg.quant!r} is unknown; choose one of {', '.join(QUANTS)}")
    if problems:
        raise ConfigError(problems)
    try:
        import gguf  # noqa: F401
    except ImportError as exc:
        raise UserError("the gguf package is missing: pip install 'llama2ft[export]' (or pip install gguf)") from exc
    source, output = Path(cfg.source).expanduser(), Path(cfg.output).expanduser().resolve()
    if not source.is_dir():
        raise UserError(f"source folder {source} does not exist")
    if output.exists() and not cfg.overwrite:
        raise UserError(f"{output} already exists; pass overwrite=true to replace it")
    with atomic_file(output) as tmp:  # a reader never sees a half-written file
        n = write_gguf(source, tmp, cfg.quant)
    print(f"wrote {output} ({n} tensors, {cfg.quant}, {output.stat().st_size / 1e6:.1f} MB)", flush=True)
    return output


main = hydra_command("export", run_export, from_store=True)

if __name__ == "__main__":
    sys.exit(main())
