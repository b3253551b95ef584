#!/usr/bin/env bash
# The GPU measurements of training speed, in one device call of at most 10 minutes (H200 / H100):
#   checks          bench/gpu_checks.py: packed attention (flex / masked sdpa / per-sample) equals unpacked,
#                   its cost per batch, and Liger's kernels on/off: loss and gradients match
#   bench_synthetic bench/train_throughput.py --preset 7b on the synthetic rows: llama2ft vs the community recipe
#   bench_sharegpt  the same on the shared ShareGPT rows
#   model           a random Llama-2-7B-shape model saved to disk (bench/random_llama.py)
#   train_nf4       llama2ft-train quant=nf4 on it (QLoRA, checkpointing on: peak memory at 1 x 2048 tokens)
#   train_bf16      llama2ft-train bf16 LoRA on it (2 x 2048 tokens, checkpointing auto)
#   merge, chat     llama2ft-merge of the nf4 run (else the bf16 one), then one llama2ft-chat prompt= on the merged folder
# Results: $OUT/bench/results/gpu-*.json ("device": "cuda" and the device name in each) and $OUT/gpu_run.log.
# Copy the JSON files to bench/results/ and commit them.
#
# Before the call, here: `make gpu-wheels` (the wheels the GPU image lacks, the ShareGPT csv and the Llama-2
# tokenizer, into the git-ignored .whl/ and .devdata/). The call: run(command="bash bench/gpu_run.sh",
# carry=[".whl", ".devdata"], timeout_s=600).
# Dry run on CPU (tiny shapes, the same stages and commands, ~2-3 min): DEVICE=cpu bash bench/gpu_run.sh
# STAGES="checks bench_synthetic" runs only those; each stage that no longer fits in BUDGET seconds is skipped.
set -uo pipefail
DEVICE=${DEVICE:-cuda}
PY=${PY:-python3}
OUT=${OUT:-/tmp/llama2ft-gpu-out}
WORK=${WORK:-/tmp/llama2ft-gpu-work}
BUDGET=${BUDGET:-570}
RES=$OUT/bench/results
LOG=$OUT/gpu_run.log
mkdir -p "$RES" "$WORK"
: > "$LOG"
cd "$(dirname "$0")/.." || exit 1
if [ "$DEVICE" = cuda ] && [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "wheel install failed"; exit 1; }
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_HOME=$WORK/hf LLAMA2FT_CACHE_DIR=$WORK/cache WANDB_MODE=disabled \
  TOKENIZERS_PARALLELISM=false
DATA=.devdata/dev_sft_sharegpt.csv; [ -f "$DATA" ] || DATA=../shared/data/dev_sft_sharegpt.csv
TOK=.devdata/llama2-tokenizer; [ -d "$TOK" ] || TOK=../shared/data/llama2-tokenizer
if [ "$DEVICE" = cuda ]; then
  nvidia-smi -L
  SHAPE=7b SEQ=2048 STEPS=12 CHECKS="--device cuda" TRAIN_DEV="trainer.use_cpu=false"
  BENCH="--device cuda --preset 7b --samples 64 --time-budget 30"
else  # the dry run: same code paths, tiny shapes
  SHAPE=tiny SEQ=256 STEPS=2 CHECKS="--device cpu --preset quick" TRAIN_DEV="trainer.use_cpu=true"
  BENCH="--device cpu --quick --samples 12"
fi
# versions from the installed metadata: importing transformers and peft (bitsandbytes) only to print them took ~5 s
$PY -c "import torch; from importlib.metadata import version as v; print('torch', torch.__version__, 'transformers', \
v('transformers'), 'peft', v('peft'), 'cuda', torch.cuda.is_available())" | tee -a "$LOG"
START=$SECONDS
declare -A RC

stage() {  # stage NAME ESTIMATE_S TIMEOUT_S COMMAND...: run it into the log, or skip it
  local name=$1 est=$2 limit=$3 left t0
  shift 3
  left=$((BUDGET - (SECONDS - START)))
  if [ -n "${STAGES:-}" ] && [[ " $STAGES " != *" $name "* ]]; then return; fi
  if [ "$DEVICE" = cuda ] && [ "$left" -lt "$est" ]; then
    echo "== $name: skipped, ${left}s of the budget left (needs ~${est}s)" | tee -a "$LOG"; RC[$name]=skipped; return
  fi
  echo "== $name" | tee -a "$LOG"
  t0=$SECONDS
  [ "$limit" -gt "$left" ] && [ "$DEVICE" = cuda ] && limit=$left
  timeout "$limit" bash -c '"$@"' _ "$@" >> "$LOG" 2>&1  # through bash: a stage may be the function train
  RC[$name]=$?
  echo "== $name: rc=${RC[$name]} in $((SECONDS - t0))s" | tee -a "$LOG"
}

train() {  # train RUN_DIR OVERRIDES...: llama2ft-train on the random model, packed ShareGPT rows
  local dir=$1
  shift
  rm -rf "$dir"
  $PY -m llama2ft.train model=llama2-7b model.name_or_path="$WORK/base" model.tokenizer="$TOK" data=csv \
    data.train_file="$DATA" data.eval_fraction=0 data.max_seq_len=$SEQ data.packing=true lora=r64 $TRAIN_DEV \
    trainer.max_steps=$STEPS trainer.gradient_accumulation_steps=1 trainer.logging_steps=2 trainer.save_steps=1000 \
    trainer.eval_steps=1000 hydra.run.dir="$dir" "$@"
}

merge() {  # the nf4 run's adapter, or the bf16 run's if the nf4 run failed: the merge and chat path still runs
  local run=$WORK/run-nf4
  [ -d "$run/adapter" ] || run=$WORK/run-bf16
  echo "merging $run"
  $PY -m llama2ft.merge run="$run" output="$WORK/merged" verify=false
}

export DEVICE PY WORK TOK DATA SEQ STEPS TRAIN_DEV
export -f train merge
stage checks 60 150 $PY bench/gpu_checks.py $CHECKS --out "$RES/gpu-checks.json"
stage bench_synthetic 100 170 $PY bench/train_throughput.py $BENCH --synthetic --out "$RES/gpu-bench-synthetic.json"
stage bench_sharegpt 100 170 $PY bench/train_throughput.py $BENCH --data "$DATA" --out "$RES/gpu-bench-sharegpt.json"
stage model 40 150 $PY bench/random_llama.py --shape $SHAPE --device "$DEVICE" --out "$WORK/base"
stage train_nf4 90 200 train "$WORK/run-nf4" quant=nf4 trainer.gradient_checkpointing=true \
  trainer.per_device_train_batch_size=1
stage train_bf16 70 180 train "$WORK/run-bf16" trainer.gradient_checkpointing=auto trainer.per_device_train_batch_size=2
rm -rf "$WORK/merged"
stage merge 60 180 merge
stage chat 30 120 $PY -m llama2ft.chat model.name_or_path="$WORK/merged" prompt="你好，请介绍一下你自己。" \
  max_new_tokens=16

grep -E "^(==|data:|model:|speed:|gradient checkpointing|merged|saved|error|speedup|liger|flex|sdpa|llama2ft_varlen)" \
  "$LOG" | cut -c1-400
RCS=$(for k in "${!RC[@]}"; do printf '"%s": "%s",' "$k" "${RC[$k]}"; done)
$PY - "$WORK" "$RES/gpu-commands.json" "{${RCS%,}}" "$LOG" <<'EOF'
"""The real commands' outcome: each run's metrics.json (speed settings, peak GPU memory), merge and chat."""
import json, sys
from pathlib import Path
import torch
work, out, rcs, log = Path(sys.argv[1]), Path(sys.argv[2]), json.loads(sys.argv[3]), Path(sys.argv[4]).read_text()
cuda = torch.cuda.is_available()
result = {"device": "cuda" if cuda else "cpu", "device_name": torch.cuda.get_device_name() if cuda else "cpu",
          "torch": torch.__version__, "stages_rc": rcs}
for name in ("run-nf4", "run-bf16"):
    m = work / name / "metrics.json"
    result[name] = json.loads(m.read_text()) if m.is_file() else None
result["merged_files"] = sorted(p.name for p in (work / "merged").glob("*")) if (work / "merged").is_dir() else None
chat = log.split("== chat\n")[-1].split("\n== chat:")[0] if "== chat\n" in log else ""
result["chat_output_tail"] = chat.strip().splitlines()[-3:] if chat else None
out.write_text(json.dumps(result, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
print("stages:", rcs)
EOF
echo "results in $RES: $(ls "$RES" | tr '\n' ' ')"
