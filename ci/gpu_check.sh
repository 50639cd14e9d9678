#!/bin/bash
# The checks that need a GPU, as one script (about 8 minutes on one H100 or H200 with 16 cores), most at-risk
# first: the tests' CUDA cases, the GPU tier's stage timing (every defense forked from the fork server while the
# run holds a CUDA context), the pytest-benchmark throughput ratios on the GPU, the training loop's throughput at
# the GPU tier's shape, then the whole default suite with CUDA visible.
#   bash ci/gpu_check.sh [LOGDIR]          # logs in LOGDIR (default $OUT, else /tmp/bdbench-gpu-check)
# Needs the package importable (pip install -e . --no-deps where torch is already there) and pytest-xdist.
set -u
log=${1:-${OUT:-/tmp/bdbench-gpu-check}}; mkdir -p "$log"
work=$(mktemp -d)  # result files go here, then into one archive in $log (few files come back from a device run)
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=2 BDBENCH_HOME=${BDBENCH_HOME:-$work/home}
step() { local name=$1 limit=$2; shift 2; local s=$SECONDS
  timeout "$limit" "$@" > "$log/$name.log" 2>&1; echo "== $name: exit $? in $((SECONDS - s)) s"; tail -n 6 "$log/$name.log"; }
python3 -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.__version__, torch.cuda.get_device_name())" || exit 1
skip=(); command -v olah-cli > /dev/null || skip=(--ignore tests/test_hub.py --ignore tests/test_hub_shared.py)  # no loopback hub
step cuda-tests 60 python3 -m pytest -q -n 8 -p no:cacheprovider -k cuda -rfE --tb=short -W ignore "${skip[@]}"
step stage-timing 180 python3 -m benchmark run ci/experiments/gpu-stage-timing.yaml --device cuda --results "$work/results"
tar czf "$log/stage-timing-results.tgz" -C "$work" results 2>/dev/null
step perf 120 python3 -m pytest -q -p no:cacheprovider tests/test_perf.py --benchmark-only --benchmark-max-time=0.5 \
  --benchmark-json="$log/perf.json" -s -rfE --tb=short -W ignore
step throughput 45 python3 ci/gpu_throughput.py cuda
step tests 135 python3 -m pytest -q -n 14 -p no:cacheprovider -k "not cuda" -rfE --tb=short -W ignore "${skip[@]}"
