#!/usr/bin/env bash
# Packs what scripts/gpu_check.sh needs on a GPU machine that reaches no package registry and
# takes at most 64 MiB of files along (this workplace's lent GPU machine): the lock's versions
# of the packages its image lacks or holds too old, as Python 3.12 wheels, and the real
# architectures of the two check models (config and tokenizer, no weights: 538 MB and 1.1 GB
# do not travel). gpu_check.sh then gives those architectures random weights there, so its
# figures are the real shapes' speed and memory, and its losses fall from chance, not from a
# trained model's.
#
#   bash scripts/gpu_bundle.sh        # writes .gpu/ (git-ignored), then prints its size
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=.gpu
PY=.venv/bin/python
rm -rf "$OUT" && mkdir -p "$OUT/wheels" "$OUT/site" "$OUT/twins"

# The device image holds torch, accelerate, tokenizers, safetensors, pandas, pyarrow and the
# scientific stack; transformers 5.17 and huggingface_hub 1.33 there are older than the lock's.
PACKAGES=(transformers peft trl datasets dill multiprocess pydantic pydantic-core annotated-types
  typing-inspection huggingface-hub hf-xet httpx2 httpcore2 truststore kernels tomlkit fsspec gguf
  typer)
pins=()
for p in "${PACKAGES[@]}"; do
  pins+=("$(grep -io "^$p==[0-9a-z.]*" requirements.lock)") || { echo "$p is not in requirements.lock" >&2; exit 1; }
done
platforms=()
for n in 17 24 27 28 34; do platforms+=(--platform "manylinux_2_${n}_x86_64"); done
$PY -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  "${platforms[@]}" --platform manylinux2014_x86_64 -d "$OUT/wheels" "${pins[@]}" 2>&1 \
  | { grep -v "^WARNING: Location" || true; }

# bitsandbytes' wheel holds a library per CUDA version (129 MB unpacked); the image's torch is
# built for CUDA 13, so only those libraries (and the CPU one) travel, unpacked.
bnb=$(grep -io '^bitsandbytes==[0-9.]*' requirements.lock)
$PY -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  "${platforms[@]}" -d "$OUT/bnb" "$bnb" 2>&1 | { grep -v "^WARNING: Location" || true; }
(cd "$OUT/site" && unzip -q ../bnb/*.whl && find bitsandbytes -name 'libbitsandbytes_*.so' \
  ! -name '*cuda13*' ! -name '*cpu*' -delete)
rm -rf "$OUT/bnb"

# Each check model's architecture: its config and tokenizer, read from the registry's files.
$PY - "$OUT/twins" <<'EOF'
import sys
from pathlib import Path

from transformers import AutoConfig, AutoTokenizer

from finetune.models import gguf_as_shipped

out = Path(sys.argv[1])
for name in ["smollm2-135m-instruct", "qwen2.5-coder-1.5b-instruct"]:
    gguf = gguf_as_shipped(name, key="gpu_bundle")
    source = gguf.parent
    AutoConfig.from_pretrained(source, gguf_file=gguf.name).save_pretrained(out / name)
    AutoTokenizer.from_pretrained(source).save_pretrained(out / name)
    print(f"{name}: architecture from {gguf}")
EOF
du -sh "$OUT" data/rotten-tomatoes
