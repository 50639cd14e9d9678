#!/usr/bin/env bash
# Build the static leaderboard from the committed result files into OUT (default _site).
set -euo pipefail
cd "$(dirname "$0")/.."
bdbench leaderboard build "${1:-_site}" --results leaderboard/results
