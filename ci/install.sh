#!/usr/bin/env bash
# Install bdbench and its test tools from scratch into the current Python.
# torch/torchvision are pinned (the CPU machines here hold these wheels on disk; CUDA builds elsewhere).
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install --quiet --upgrade pip
python -m pip install --quiet "torch==2.14.1" "torchvision==0.29.1"
python -m pip install --quiet -e ".[test]"
python -c "import benchmark, torch, timm, datasets; print('bdbench', benchmark.__version__, '| torch', torch.__version__, '| timm', timm.__version__, '| datasets', datasets.__version__)"
