#!/usr/bin/env bash
# Validate the submissions changed since BASE and run each on the CPU scenarios; results go to OUT.
# Usage: ci/validate_changed.sh BASE [OUT]
set -euo pipefail
cd "$(dirname "$0")/.."
base=${1:?usage: ci/validate_changed.sh BASE [OUT]}
out=${2:-pr-results}
mkdir -p "$out"
mapfile -t folders < <(git diff --name-only "$base"...HEAD -- submissions/ | awk -F/ 'NF>=3 {print $1"/"$2"/"$3}' | sort -u)
status=0
for f in "${folders[@]}"; do
  [ -f "$f/submission.yaml" ] || { echo "$f: removed or not a submission, skipped"; continue; }
  echo "::group::validate $f"
  if ! bdbench validate "$f"; then status=1; fi
  echo "::endgroup::"
  kind=$(basename "$(dirname "$f")")
  name=$(basename "$f")
  if [ "$kind" = attacks ]; then args=(--attack "$name" --defense); else args=(--attack badnets --defense "$name"); fi
  # each defense runs in a sandbox with a wall-time and memory limit (the scenario's defender limits);
  # --isolation sandbox: submitted code is untrusted, so no sandbox means no run
  bdbench run digits "${args[@]}" --seeds 0 1 2 --results "$out" --quiet --isolation sandbox || status=1
done
[ ${#folders[@]} -gt 0 ] || echo "no submission changed"
exit $status
