"""llama2ft-export: a merged Llama folder (llama2ft-merge output) as one GGUF file for llama.cpp, with an
Ollama Modelfile beside it.

    llama2ft-export format=gguf source=merged/my-model output=merged/my-model/my-model.q4_k_m.gguf quant=q4_k_m

q4_0 and the k-quants go through llama.cpp's own quantizer from an unquantized GGUF written first (a
hidden temporary file beside the output, removed afterwards). A GGUF written into the merged folder is
listed, with its size, in the folder's model card.
"""
from __future__ import annotations

import sys
from pathlib import Path

from omegaconf import DictConfig

from llama2ft.config.hydra_app import hydra_command
from llama2ft.core.errors import ConfigError, UserError
from llama2ft.core.files import atomic_file, clean_stale, temp_path
from llama2ft.publishing.gguf import LLAMA_CPP_QUANTS, QUANTS, quantize, unquantized_type, write_gguf
from llama2ft.publishing.model_card import refresh_files
from llama2ft.publishing.ollama import modelfile_path, write_modelfile


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
    if cfg.threads < 0:
        problems.append(f"threads={cfg.threads}: must be >= 0 (0: all cores)")
    if problems:
        raise ConfigError(problems)
    try:
        import gguf  # noqa: F401
    except ImportError as exc:
        raise UserError("the gguf package is missing: pip install 'llama2ft[export]' (or pip install gguf)") from exc
    source, output = Path(cfg.source).expanduser().resolve(), Path(cfg.output).expanduser().resolve()
    if not source.is_dir():
        raise UserError(f"source folder {source} does not exist")
    for path in (output, modelfile_path(output)) if cfg.modelfile else (output,):
        if path.exists() and not cfg.overwrite:
            raise UserError(f"{path} already exists; pass overwrite=true to replace it")
    types = None
    with atomic_file(output) as tmp:  # a reader never sees a half-written file
        if cfg.quant in LLAMA_CPP_QUANTS:
            kind = unquantized_type(source)
            unquantized = output.with_name(f"{output.name}.{kind}")
            clean_stale(unquantized)  # left by a killed export
            try:
                n = write_gguf(source, temp_path(unquantized), kind)
                types = quantize(temp_path(unquantized), tmp, cfg.quant, cfg.threads)
            finally:
                temp_path(unquantized).unlink(missing_ok=True)
        else:
            n = write_gguf(source, tmp, cfg.quant)
    kinds = f": {', '.join(f'{k} x{v}' for k, v in types.items())}" if types else ""
    print(f"wrote {output} ({n} tensors, {cfg.quant}{kinds}; {output.stat().st_size / 1e6:.1f} MB)", flush=True)
    if cfg.modelfile:
        written = write_modelfile(source, output)
        print(f"wrote {written} (ollama create NAME -f {written})" if written else
              "no Modelfile: the folder names no llama2ft template that Ollama's syntax can express", flush=True)
    if output.parent == source and refresh_files(source / "README.md", source):
        print(f"listed {output.name} in {source / 'README.md'}", flush=True)
    return output


main = hydra_command("export", run_export, from_store=True)

if __name__ == "__main__":
    sys.exit(main())
