#!/bin/bash
# The CIFAR-10 calibration (scenario calib-cifar10: 11 attacks x 8 defenses x 3 seeds, no transfer) on one GPU, as
# one device call. On 2 CPU cores it takes days: each backdoor about 3 to 16 minutes and Neural Cleanse about 17
# minutes per cell, by the CPU tier's recorded stage times (docs/calibration.md). A grid of the same shape (resnet18,
# chest X-ray, 289 files) took about 10 minutes with 8 workers on one H200. Rerun on the same machine to resume.
#   bash ci/gpu_calibration.sh [OUTDIR]    # grid log, result archive and calibration table in OUTDIR
# Needs the package importable and cifar10-20k at ../shared/datasets. On a device machine, copy that folder under
# ./shared (git-ignored, it travels with the tree) and this script links ../shared to it.
set -u
out=${1:-${OUT:-/tmp/bdbench-gpu-calibration}}; mkdir -p "$out"
if [ ! -d ../shared/datasets/cifar10-20k ] && [ -d shared/datasets/cifar10-20k ]; then ln -sfn "$PWD/shared" ../shared; fi
work=${BDBENCH_CALIBRATION_WORK:-/tmp/bdbench-calibration}; mkdir -p "$work"   # fixed: a rerun resumes
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=2 BDBENCH_HOME=$work/home
isolation=sandbox; command -v bwrap > /dev/null || isolation=process
python3 -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.__version__, torch.cuda.get_device_name())" || exit 1
s=$SECONDS
timeout "${LIMIT:-520}" python3 -m benchmark grid calib-cifar10 --device cuda --workers 8 --results "$work/results" \
  --isolation "$isolation" > "$out/grid.log" 2>&1
echo "== grid: exit $? in $((SECONDS - s)) s (isolation: $isolation)"; tail -n 8 "$out/grid.log"
tar czf "$out/calib-cifar10-results.tgz" -C "$work/results" .
python3 -m benchmark calibration --results "$work/results" --scenario calib-cifar10 > "$out/calibration.txt" 2>&1
tail -n 40 "$out/calibration.txt"
