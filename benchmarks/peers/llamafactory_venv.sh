#!/usr/bin/env bash
# Makes LLaMA-Factory 0.9.5's own virtual environment for benchmarks/bench_peers.py:
#   bash benchmarks/peers/llamafactory_venv.sh [VENV]      (default .peers/llamafactory)
# then
#   .venv/bin/python -m benchmarks.bench_peers --llamafactory-python .peers/llamafactory/bin/python
#
# LLaMA-Factory is installed with its own declared version ranges (pip picks the newest each
# allows), on the same torch as TuneLab (2.13.0, CPU), so the two differ only in the tool.
# Three of its declared dependencies are left out because a text model never uses them:
# torchaudio and torchvision (no CPU build of either for torch 2.13 exists here; pulling them
# in would replace torch with a multi-GB CUDA build of another version) and av (video).
# LLaMA-Factory 0.9.5's data/mm_plugin.py does `import torchaudio` at the top, for audio
# inputs only; the venv gets an empty placeholder module under that name so the import
# succeeds, and any real use of it fails loudly (AttributeError). hf-transfer and modelscope
# (hub downloads) and gradio (its web UI) are left out too: the benchmark loads a local folder
# and drives the `llamafactory-cli train` command.
set -euo pipefail
cd "$(dirname "$0")/../.."
VENV="${1:-.peers/llamafactory}"
PY="${PYTHON:-python3}"

if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q torch==2.13.0
"$VENV/bin/python" -m pip install -q --no-deps llamafactory==0.9.5
"$VENV/bin/python" -m pip install -q \
  'accelerate>=1.3.0,<=1.11.0' 'datasets>=2.16.0,<=4.0.0' einops fastapi fire 'matplotlib>=3.7.0' \
  numpy omegaconf packaging pandas 'peft>=0.18.0,<=0.18.1' protobuf pydantic pyyaml safetensors scipy \
  sentencepiece sse-starlette tiktoken 'torchdata>=0.10.0,<=0.11.0' \
  'transformers>=4.55.0,<=5.6.0,!=4.52.0,!=4.57.0' 'trl>=0.18.0,<=0.24.0' 'tyro<0.9.0' uvicorn psutil

site="$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
if ! "$VENV/bin/python" -c 'import importlib.util, sys; sys.exit(importlib.util.find_spec("torchaudio") is None)'; then
  mkdir -p "$site/torchaudio"
  cat > "$site/torchaudio/__init__.py" <<'PY'
"""Placeholder made by TuneLab's benchmarks/peers/llamafactory_venv.sh: LLaMA-Factory imports
torchaudio at the top of a module used for audio inputs only. Text training never touches it."""
PY
fi
"$VENV/bin/python" -c 'import llamafactory, torch, transformers, trl, peft; print("llamafactory", llamafactory.__version__, "torch", torch.__version__, "transformers", transformers.__version__, "trl", trl.__version__, "peft", peft.__version__)'
