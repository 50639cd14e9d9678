#!/usr/bin/env bash
# The README's first command, offline, in a scratch store: the embedded default end to end.
set -euo pipefail
cd "$(dirname "$0")/.."
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
start=$(date +%s)
HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 BDBENCH_HOME="$scratch/home" \
  bdbench run --results "$scratch/results" --quiet --strict
echo "smoke: bdbench run (embedded default) finished in $(( $(date +%s) - start )) s"
