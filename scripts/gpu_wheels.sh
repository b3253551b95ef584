#!/usr/bin/env bash
# What bench/gpu_run.sh needs on the GPU machine and the GPU image lacks (Python 3.12, torch 2.11 CUDA, an older
# transformers and peft; no hydra-core, omegaconf, datasets, bitsandbytes, liger-kernel): manylinux x86_64 /
# cp312 wheels into .whl/, and the ShareGPT csv and the Llama-2 tokenizer into .devdata/ (both git-ignored; the
# device tool carries them: carry=[".whl", ".devdata"]). Versions are this venv's, so the GPU runs what the tests
# ran. Everything that travels, the working tree included, must stay under 64 MiB.
set -euo pipefail
PY=${PY:-.venv/bin/python}
SHARED=${SHARED:-../shared/data}
LIGER=${LIGER:-0.8.5}
cd "$(dirname "$0")/.."
ver() { $PY -c "import importlib.metadata as m; print(m.version('$1'))"; }
PLATFORMS=""
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 \
         manylinux1_x86_64; do PLATFORMS+=" --platform $p"; done
rm -rf .whl && mkdir -p .whl .devdata
# shellcheck disable=SC2086
$PY -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp $PLATFORMS -d .whl \
  "hydra-core==$(ver hydra-core)" "omegaconf==$(ver omegaconf)" "datasets==$(ver datasets)" "dill==$(ver dill)" \
  "multiprocess==$(ver multiprocess)" "bitsandbytes==$(ver bitsandbytes)" "transformers==$(ver transformers)" \
  "peft==$(ver peft)" "liger-kernel==$LIGER"
# antlr4-python3-runtime (omegaconf's parser) is published as an sdist only: build its pure-Python wheel here
$PY -m pip wheel -q --no-deps -w .whl "antlr4-python3-runtime==$(ver antlr4-python3-runtime)"
cp "$SHARED/dev_sft_sharegpt.csv" .devdata/
rm -rf .devdata/llama2-tokenizer && cp -r "$SHARED/llama2-tokenizer" .devdata/
total=$(( $(du -sb .whl | cut -f1) + $(du -sb .devdata | cut -f1) + $(git ls-files -z | xargs -0 cat | wc -c) ))
ls -l .whl
echo "wheels, data and working tree: $((total / 1048576)) MiB of the 64 MiB a device call carries"
[ "$total" -lt $((62 * 1048576)) ] || { echo "too large to carry"; exit 1; }
