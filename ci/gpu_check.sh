#!/bin/bash
# The checks that need a GPU, as one script (about 7 minutes on one H200 with 16 cores): the tests' CUDA cases,
# then the whole default suite with CUDA visible, the training loop's throughput, and the GPU tier's stage timing.
#   bash ci/gpu_check.sh [LOGDIR]          # logs in LOGDIR (default $OUT, else /tmp/bdbench-gpu-check)
# Needs the package importable (pip install -e . --no-deps where torch is already there) and pytest-xdist.
set -u
log=${1:-${OUT:-/tmp/bdbench-gpu-check}}; mkdir -p "$log"
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=2 BDBENCH_HOME=${BDBENCH_HOME:-/tmp/bdbench-gpu-home}
step() { local name=$1 limit=$2; shift 2; local s=$SECONDS
  timeout "$limit" "$@" > "$log/$name.log" 2>&1; echo "== $name: exit $? in $((SECONDS - s)) s"; tail -n 4 "$log/$name.log"; }
python3 -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.__version__, torch.cuda.get_device_name())" || exit 1
skip=(); command -v olah-cli > /dev/null || skip=(--ignore tests/test_hub.py --ignore tests/test_hub_shared.py)  # no loopback hub
step cuda-tests 120 python3 -m pytest -q -n 8 -p no:cacheprovider -k cuda -rfE --tb=short -W ignore "${skip[@]}"
step tests 240 python3 -m pytest -q -n 12 -p no:cacheprovider -k "not cuda" -rfE --tb=short -W ignore "${skip[@]}"
step throughput 60 python3 ci/gpu_throughput.py cuda
step stage-timing 260 python3 -m benchmark run ci/experiments/gpu-stage-timing.yaml --device cuda --results "$log/results"
tar czf "$log/stage-timing-results.tgz" -C "$log" results 2>/dev/null  # result files, one archive
