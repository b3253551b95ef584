#!/usr/bin/env bash
# One short GPU check, run once on a lent H100/H200 (never in CI):
#   1. QLoRA (nf4) training of the tiny model through the real CLI on CUDA;
#   2. bench/train_throughput.py on a Llama-2-7B-shaped model (bf16, LoRA r 64, gradient checkpointing).
# Packages the GPU image lacks travel as wheels in .whl/ (see the device tool's README); the community
# csv travels in .devdata/ (git-ignored, never committed).
set -uo pipefail
OUT=${OUT:-/tmp/gpu_out}
mkdir -p "$OUT"
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
fi
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_HOME=/tmp/hf LLAMA2FT_CACHE_DIR=/tmp/llama2ft-cache WANDB_MODE=disabled
nvidia-smi -L
python3 -c "import torch, transformers, peft; print('torch', torch.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__)"
DATA=${DATA:-.devdata/dev_sft_sharegpt.csv}
[ -f "$DATA" ] && DATA_ARG="--data $DATA" || DATA_ARG="--synthetic"
echo "== QLoRA smoke (tiny model, nf4, CUDA)"
timeout 150 python3 -m llama2ft.train experiment=tiny_smoke quant=nf4 trainer.use_cpu=false trainer.max_steps=30 \
  hydra.run.dir=/tmp/gpu_nf4 > "$OUT/nf4.log" 2>&1; echo "nf4 rc=$?"
grep -E "^(data|model):|train_runtime|saved|error" "$OUT/nf4.log" | cut -c1-300
cp /tmp/gpu_nf4/metrics.json "$OUT/nf4_metrics.json" 2>/dev/null
echo "== 7B-shaped throughput bench"
timeout ${BENCH_TIMEOUT:-400} python3 bench/train_throughput.py --device cuda --preset 7b $DATA_ARG ${BENCH_ARGS:-} \
  2>&1 | tee "$OUT/bench7b.log"
