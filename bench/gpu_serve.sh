#!/usr/bin/env bash
# One short GPU check for the chat issue, run once on a lent H100/H200 (never in CI):
#   1. bench/serve_latency.py on a Llama-2-7B-shaped model (bf16): API vs plain generate;
#   2. int8 and nf4 loading through llama2ft-chat on a tiny run trained there.
# Wheels the GPU image lacks travel in .whl/ (git-ignored), as for bench/gpu_run.sh.
set -uo pipefail
OUT=${OUT:-/tmp/gpu_out}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
  .whl/*.whl .whl/serve/*.whl > "$OUT/pip.log" 2>&1 || { tail -5 "$OUT/pip.log"; exit 1; }
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_HOME=/tmp/hf \
  LLAMA2FT_CACHE_DIR=/tmp/llama2ft-cache WANDB_MODE=disabled
nvidia-smi -L
echo "== serve latency, 7B shape"
timeout 240 python3 bench/serve_latency.py --device cuda --preset 7b --tokens 128 --repeats 3 --concurrent 8 \
  2>&1 | grep -v Warning | tee "$OUT/serve7b.log"
[ -n "${SKIP_CHAT:-}" ] && exit 0
echo "== int8 / nf4 chat on GPU"
timeout 120 python3 -m llama2ft.train experiment=tiny_smoke trainer.use_cpu=false trainer.max_steps=30 \
  hydra.run.dir=/tmp/gpu_tiny > "$OUT/tiny.log" 2>&1; echo "train rc=$?"
for q in none int8 nf4; do
  timeout 90 python3 -m llama2ft.chat run=/tmp/gpu_tiny quant=$q device=cuda temperature=0 max_new_tokens=8 \
    "prompt='数字 680 的中文读法是什么？'" > "$OUT/chat_$q.log" 2>&1
  echo "chat quant=$q rc=$? answer: $(tail -c 200 "$OUT/chat_$q.log" | tr '\n' ' ')"
done
