#!/bin/bash
# A slice of a grid on a GPU machine within a time limit, its result files archived as they finish (a device run
# returns only what is under $OUT, and a killed run still returns it). Used for the CPU tier's resnet18 v2 block:
#   DATA=.gpudata bash ci/gpu_grid.sh 505 cpu --scenario cpu-cifar10-chest-resnet18 cpu-cifar10-utkface-resnet18 \
#     --seeds 0 1 2 --workers 6 --threads 2
# DATA: a folder holding the datasets of ../shared/datasets (linked there when that is absent: scenarios name
# their data relative to the repository). Results: $OUT/results.tgz (a results/ folder); log: $OUT/grid.log.
# The run resumes from the committed leaderboard/results (copied into its results folder first), so it redoes no
# finished task; FRESH=1 starts from an empty folder instead.
# Exits with the grid's status (124: the time limit). DEVICE=cpu tries it without a GPU. Needs the package
# importable (pip install -e . --no-deps where torch is already there).
set -u
[ $# -ge 2 ] || { echo "usage: DATA=<datasets folder> bash ci/gpu_grid.sh LIMIT_S GRID [bdbench grid options]"; exit 2; }
cd "$(dirname "$0")/.."
limit=$1; shift
export PYTHONUNBUFFERED=1
if [ ! -e ../shared/datasets ]; then
  [ -n "${DATA:-}" ] && [ -d "$DATA" ] || { echo "no ../shared/datasets: set DATA to a folder holding the datasets"; exit 2; }
  mkdir -p ../shared && ln -sfn "$(realpath "$DATA")" ../shared/datasets
fi
echo "git $(git rev-parse --short HEAD 2>/dev/null), changed: $(git diff HEAD --name-only 2>/dev/null | tr '\n' ' ')"
work=${WORK:-/tmp/bdwork}; out=${OUT:-/tmp/bdbench-gpu-grid}; mkdir -p "$work/results" "$out"
[ -n "${FRESH:-}" ] || [ ! -d leaderboard/results ] || cp -rn leaderboard/results/. "$work/results/"
archive() { local tmp; tmp=$(mktemp "$out/.results.XXXXXX") && tar czf "$tmp" -C "$work" results && mv "$tmp" "$out/results.tgz"; }
( while [ ! -e "$work/.stop" ]; do sleep 20; archive; done ) & loop=$!
s=$SECONDS
BDBENCH_HOME=$work/home timeout "$limit" python3 -m benchmark grid "$@" --device "${DEVICE:-cuda}" --results "$work/results" > "$out/grid.log" 2>&1
rc=$?
echo "grid exit $rc after $((SECONDS - s)) s; $(find "$work/results" -name '*.json' | wc -l) result files"
touch "$work/.stop"; wait $loop; rm -f "$work/.stop"; archive
grep -a "^\[done\]\|^grid:" "$out/grid.log" | tail -n 20
exit $rc
