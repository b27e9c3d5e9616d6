#!/usr/bin/env bash
# The GPU paths, checked in one go on a CUDA machine (at most ~8 min on one GPU after set-up):
#   1. the GPU and `model.dtype: auto` (bf16 where the GPU has it);
#   2. bf16 LoRA on SmolLM2-135M: loss falls, adapter saved, evaluated on the GPU;
#   3. 4-bit QLoRA on Qwen2.5-Coder-1.5B for a few steps: loss falls, LoRA weights moved,
#      adapter saved, evaluated;
#   4. llama-cpp-python built with -DGGML_CUDA=on, when GPU_CHECK_LLAMA=1 (a ~10 min build).
# It sets itself up from nothing (`make setup`, which takes PyPI's CUDA build of torch), and
# prints one line per check: `PASS|FAIL name: figure`. Exit 1 when any check fails.
#
# On a GPU machine that reaches no package registry, run `scripts/gpu_bundle.sh` first where
# one is reachable and take `.gpu/` and `data/rotten-tomatoes/` along: the check then runs
# under that machine's own python3 and torch with the bundled packages, on the two models'
# real architectures with random weights (their weights do not travel), and every line says
# so (`twin`). The QLoRA check then trains on the sentiment data (BBC topics stays behind).
#
#   bash scripts/gpu_check.sh            # from the repository root or anywhere
#   GPU_CHECK_STEPS=40 bash scripts/gpu_check.sh
#   GPU_CHECKS="gpu qwen_qlora" bash scripts/gpu_check.sh   # some checks only
set -uo pipefail
cd "$(dirname "$0")/.."
STEPS=${GPU_CHECK_STEPS:-20}
WORK=$(mktemp -d /tmp/gpu-check.XXXXXX)
LOG=${GPU_CHECK_LOG:-$WORK/log}  # GPU_CHECK_LOG=FILE keeps the log elsewhere
PY=.venv/bin/python
FT=".venv/bin/finetune"
TWIN=""
OFFLINE=""
QUIET_TRACKING=""
failed=0
export WANDB_MODE=offline PYTHONUNBUFFERED=1

say() { printf '%s %s%s: %s\n' "$1" "$2" "$TWIN" "$3"; [ "$1" = PASS ] || failed=1; }

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
  local card; card=$(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader) || return 1
  $PY -c "print('$card |', end=' '); import torch, transformers, peft, trl, bitsandbytes as bnb; assert torch.cuda.is_available(), 'torch sees no CUDA GPU'; print('torch', torch.__version__, 'CUDA', torch.version.cuda, '| transformers', transformers.__version__, 'peft', peft.__version__, 'trl', trl.__version__, 'bitsandbytes', bnb.__version__)"
}

auto_dtype() {
  $PY -c "
from finetune.hardware import weight_dtype_name
got = weight_dtype_name('auto', method='lora')
assert got == 'bfloat16', f'model.dtype auto picked {got}'
print('model.dtype auto ->', got)"
}

# The model a check trains: the registry's name, or offline its architecture from .gpu/twins/
# with random bf16 weights, made once on the GPU.
model() {
  if [ -z "$OFFLINE" ]; then echo "$1"; return; fi
  local dir=$WORK/models/$1
  if [ ! -f "$dir/model.safetensors" ]; then
    $PY - ".gpu/twins/$1" "$dir" >>"$LOG" 2>&1 <<'EOF'
import shutil, sys
import torch
from transformers import AutoConfig, AutoModelForCausalLM
source, target = sys.argv[1:]
torch.manual_seed(0)
with torch.device("cuda"):
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(source), dtype=torch.bfloat16)
model.save_pretrained(target)
for name in ["tokenizer.json", "tokenizer_config.json", "chat_template.jinja"]:
    shutil.copy(f"{source}/{name}", target)
EOF
    [ $? = 0 ] || return 1
  fi
  echo "$dir"
}

# The newest finished run under $WORK/runs.
latest_run() { ls -dt "$WORK"/runs/*/*/ | grep -v '\.partial/$' | head -1; }

# Train RECIPE with OVERRIDES into $WORK/runs; print the loss's first and last values.
train() {
  local recipe=$1; shift
  $FT train "$recipe" "tracking.runs_dir=$WORK/runs" "train.max_steps=$STEPS" \
    train.save_every=1000 train.eval_every=1000 ${QUIET_TRACKING:+"$QUIET_TRACKING"} "$@" >>"$LOG" 2>&1 || return 1
  local run; run=$(latest_run)
  $PY - "$run" <<'EOF'
import json, sys, pathlib
run = pathlib.Path(sys.argv[1])
s = json.loads((run / "train_summary.json").read_text())
# Training loss is logged every few steps; a run too short for two logs has its eval losses.
kind = "train" if s["final_train_loss"] is not None else "eval"
first, last = s[f"first_{kind}_loss"], s[f"final_{kind}_loss"]
assert (run / "adapter" / "adapter_model.safetensors").is_file(), "no adapter saved"
assert last < first, f"{kind} loss did not fall: {first:.3f} -> {last:.3f}"
print(f"{kind} loss {first:.3f} -> {last:.3f} in {s['steps']} steps, {s['tokens_per_second']} tok/s, peak {s['peak_memory_bytes'] / 2**30:.1f} GiB")
EOF
}

# Evaluate the newest run of RECIPE on 40 test items with OVERRIDES; print each system's score.
evaluate() {
  local recipe=$1; shift
  local run; run=$(latest_run)
  $FT eval "$recipe" --run "$run" "tracking.runs_dir=$WORK/runs" data.max_test_examples=40 \
    eval.timing.rounds=6 eval.latency_items=8 eval.tfidf.enabled=false ${QUIET_TRACKING:+"$QUIET_TRACKING"} "$@" \
    >>"$LOG" 2>&1 || return 1
  $PY - "$run" <<'EOF'
import json, sys, pathlib
r = json.loads((pathlib.Path(sys.argv[1]) / "eval" / "results.json").read_text())
print("evaluated on 40 items:", "; ".join(
    f"{s['name']} {next(iter(s['metrics'].values()))['value']:.3f}, p50 {s['latency_ms']['p50']:.0f} ms,"
    f" {s['throughput_items_per_s']:.0f} items/s batched, peak {s['peak_memory_bytes'] / 2**30:.2f} GiB"
    for s in r["systems"]))
EOF
}

# The adapter's LoRA B matrices start at zero: any non-zero one means 4-bit gradients flowed
# (on a CPU, bitsandbytes' 4-bit layers give none).
lora_moved() {
  local run; run=$(latest_run)
  $PY - "$run/adapter/adapter_model.safetensors" <<'EOF'
import sys
from safetensors.torch import load_file
b = [t for k, t in load_file(sys.argv[1]).items() if "lora_B" in k]
moved = sum(bool(t.abs().max() > 0) for t in b)
assert moved == len(b) > 0, f"{len(b) - moved} of {len(b)} LoRA B matrices still zero"
print(f"all {len(b)} LoRA B matrices moved from zero")
EOF
}

smollm2_lora() {
  local base; base=$(model smollm2-135m-instruct) || return 1
  local recipe=recipes/rt-sentiment-smollm2-lora.yaml
  local trained; trained=$(train $recipe model.dtype=auto "model.base=$base") || return 1
  local scores; scores=$(evaluate $recipe "model.base=$base" \
    "eval.baselines=[{name: base zero-shot, model: base, shots: 0}]") || return 1
  echo "$trained; $scores"
}

qwen_qlora() {
  local recipe=recipes/bbc-topics-qwen1.5b-qlora.yaml
  local base; base=$(model qwen2.5-coder-1.5b-instruct) || return 1
  local swap=()
  if [ -n "$OFFLINE" ]; then
    # The sentiment recipe with the QLoRA recipe's model and training settings.
    recipe=recipes/rt-sentiment-smollm2-lora.yaml
    swap=(model.quantization=4bit model.qlora.quant_type=nf4 model.qlora.double_quant=true
      model.qlora.compute_dtype=bfloat16 train.batch_size=4 train.gradient_accumulation_steps=4
      train.gradient_checkpointing=true)
  fi
  local trained; trained=$(train $recipe train.budget_minutes=4 "model.base=$base" "${swap[@]}") \
    || return 1
  local moved; moved=$(lora_moved) || return 1
  local scores; scores=$(evaluate $recipe "model.base=$base" "${swap[@]}" \
    "eval.baselines=[{name: base zero-shot, model: base, shots: 0}]") || return 1
  echo "$trained; $moved; $scores"
}

llama_cuda() {
  CMAKE_ARGS="-DGGML_CUDA=on" $PY -m pip install -q --no-cache-dir --force-reinstall --no-deps \
    "$(grep -o 'llama-cpp-python==[0-9.]*' requirements.lock)" >>"$LOG" 2>&1 || return 1
  $PY -c "import llama_cpp; assert llama_cpp.llama_supports_gpu_offload(), 'built without GPU offload'; print('llama.cpp GPU offload: yes')"
}

echo "gpu_check: log in $LOG"
if [ -d .gpu ] && [ ! -x "$PY" ]; then
  # Offline: this machine's python3 and torch, the bundled packages first on the path.
  OFFLINE=1
  TWIN=" [twin]"
  QUIET_TRACKING=tracking.wandb.mode=disabled  # wandb is not bundled
  PY=${GPU_CHECK_PYTHON:-python3}
  FT="$PY -m finetune"
  $PY -m pip install -q --no-index --no-deps --no-compile --target "$WORK/site" .gpu/wheels/*.whl \
    >>"$LOG" 2>&1 || { echo "FAIL setup: the bundled wheels did not install; see $LOG"; exit 1; }
  export PYTHONPATH="$WORK/site:$PWD/.gpu/site:$PWD"
  echo "offline: $($PY --version) at $(command -v "$PY"), bundled packages from .gpu/; [twin] = the model's architecture with random weights"
fi
export -f gpu auto_dtype model latest_run train evaluate lora_moved smollm2_lora qwen_qlora llama_cuda
export STEPS WORK LOG PY FT OFFLINE QUIET_TRACKING
[ -n "$OFFLINE" ] || [ -f .venv/.installed ] || make setup >>"$LOG" 2>&1 || { say FAIL setup "make setup failed; see $LOG"; exit 1; }
# GPU_CHECKS="gpu qwen_qlora" runs only those checks (a short lease).
CHECKS=" ${GPU_CHECKS:-gpu auto_dtype smollm2_lora qwen_qlora} "
[[ $CHECKS == *" gpu "* ]] && check gpu 60 gpu
[[ $CHECKS == *" auto_dtype "* ]] && check "dtype auto" 60 auto_dtype
[[ $CHECKS == *" smollm2_lora "* ]] && check "bf16 LoRA, SmolLM2-135M" 240 smollm2_lora
[[ $CHECKS == *" qwen_qlora "* ]] && check "4-bit QLoRA, Qwen2.5-Coder-1.5B" 360 qwen_qlora
if [ "${GPU_CHECK_LLAMA:-0}" = 1 ]; then
  check "llama.cpp CUDA build" 900 llama_cuda
else
  echo "SKIP llama.cpp CUDA build: GPU_CHECK_LLAMA=1 builds it (~10 min)"
fi
exit $failed
