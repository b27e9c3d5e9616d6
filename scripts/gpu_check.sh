#!/usr/bin/env bash
# The GPU paths, checked in one go on a CUDA machine (at most ~8 min on one GPU after set-up):
#   1. the GPU and `model.dtype: auto` (bf16 where the GPU has it);
#   2. bf16 LoRA on SmolLM2-135M: loss falls, adapter saved;
#   3. 4-bit QLoRA on Qwen2.5-Coder-1.5B for a few steps: loss falls, adapter saved, evaluated;
#   4. llama-cpp-python built with -DGGML_CUDA=on, when GPU_CHECK_LLAMA=1 (a ~10 min build).
# It sets itself up from nothing (`make setup`, which takes PyPI's CUDA build of torch), and
# prints one line per check: `PASS|FAIL name: figure`. Exit 1 when any check fails.
#
#   bash scripts/gpu_check.sh            # from the repository root or anywhere
#   GPU_CHECK_STEPS=40 bash scripts/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
STEPS=${GPU_CHECK_STEPS:-20}
WORK=$(mktemp -d /tmp/gpu-check.XXXXXX)
LOG=$WORK/log
PY=.venv/bin/python
failed=0
export WANDB_MODE=offline PYTHONUNBUFFERED=1

say() { printf '%s %s: %s\n' "$1" "$2" "$3"; [ "$1" = PASS ] || failed=1; }

# One check: NAME LIMIT_SECONDS COMMAND...; the command prints its figure as its last line.
check() {
  local name=$1 limit=$2; shift 2
  local started=$SECONDS out
  # `timeout` runs programs, not functions: each check runs in a child bash that has them.
  if out=$(timeout "$limit" bash -c '"$@"' _ "$@" 2>>"$LOG"); then
    say PASS "$name" "$(tail -1 <<<"$out") ($((SECONDS - started)) s)"
  else
    say FAIL "$name" "exit $? after $((SECONDS - started)) s; see $LOG"
  fi
}

gpu() {
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || return 1
  $PY -c "import torch; assert torch.cuda.is_available(), 'torch sees no CUDA GPU'; print('torch', torch.__version__, 'CUDA', torch.version.cuda)"
}

auto_dtype() {
  $PY -c "
from finetune.hardware import weight_dtype_name
got = weight_dtype_name('auto', method='lora')
assert got == 'bfloat16', f'model.dtype auto picked {got}'
print('model.dtype auto ->', got)"
}

# Train RECIPE with OVERRIDES into $WORK/runs; print the loss's first and last values.
train() {
  local recipe=$1; shift
  .venv/bin/finetune train "$recipe" "tracking.runs_dir=$WORK/runs" "train.max_steps=$STEPS" \
    train.save_every=1000 train.eval_every=1000 "$@" >>"$LOG" 2>&1 || return 1
  local run; run=$(ls -dt "$WORK"/runs/"$(basename "$recipe" .yaml)"/*/ | head -1)
  $PY - "$run" <<'EOF'
import json, sys, pathlib
run = pathlib.Path(sys.argv[1])
s = json.loads((run / "train_summary.json").read_text())
first, last = s["first_train_loss"], s["final_train_loss"]
assert (run / "adapter" / "adapter_model.safetensors").is_file(), "no adapter saved"
assert last < first, f"loss did not fall: {first:.3f} -> {last:.3f}"
print(f"loss {first:.3f} -> {last:.3f} in {s['steps']} steps, {s['tokens_per_second']} tok/s, peak {s['peak_memory_bytes'] / 2**30:.1f} GiB")
EOF
}

smollm2_lora() {
  train recipes/rt-sentiment-smollm2-lora.yaml model.dtype=auto
}

qwen_qlora() {
  local recipe=recipes/bbc-topics-qwen1.5b-qlora.yaml
  train $recipe train.budget_minutes=4 || return 1
  local run; run=$(ls -dt "$WORK"/runs/bbc-topics-qwen1.5b-qlora/*/ | head -1)
  .venv/bin/finetune eval $recipe --run "$run" "tracking.runs_dir=$WORK/runs" \
    data.max_test_examples=40 eval.timing.rounds=6 eval.latency_items=8 eval.tfidf.enabled=false >>"$LOG" 2>&1 || return 1
  $PY - "$run" <<'EOF'
import json, sys, pathlib
r = json.loads((pathlib.Path(sys.argv[1]) / "eval" / "results.json").read_text())
print("evaluated:", "; ".join(f"{s['name']} {next(iter(s['metrics'].values()))['value']:.3f}" for s in r["systems"]))
EOF
}

llama_cuda() {
  CMAKE_ARGS="-DGGML_CUDA=on" $PY -m pip install -q --no-cache-dir --force-reinstall --no-deps \
    "$(grep -o 'llama-cpp-python==[0-9.]*' requirements.lock)" >>"$LOG" 2>&1 || return 1
  $PY -c "import llama_cpp; assert llama_cpp.llama_supports_gpu_offload(), 'built without GPU offload'; print('llama.cpp GPU offload: yes')"
}

export -f gpu auto_dtype train smollm2_lora qwen_qlora llama_cuda
export STEPS WORK LOG PY
echo "gpu_check: log in $LOG"
[ -f .venv/.installed ] || make setup >>"$LOG" 2>&1 || { say FAIL setup "make setup failed; see $LOG"; exit 1; }
check gpu 60 gpu
check "dtype auto" 60 auto_dtype
check "bf16 LoRA, SmolLM2-135M" 180 smollm2_lora
check "4-bit QLoRA, Qwen2.5-Coder-1.5B" 360 qwen_qlora
if [ "${GPU_CHECK_LLAMA:-0}" = 1 ]; then
  check "llama.cpp CUDA build" 900 llama_cuda
else
  echo "SKIP llama.cpp CUDA build: GPU_CHECK_LLAMA=1 builds it (~10 min)"
fi
exit $failed
