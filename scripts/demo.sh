#!/usr/bin/env bash
# Set up, start the local sandbox (API emulator, local KubeRay + Ray, S3, MLflow, operator),
# apply examples/quickstart.yaml and watch it to its final state.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export HF_HUB_OFFLINE=1 RAY_USAGE_STATS_ENABLED=0 PATH="$PWD/.venv/bin:$PATH"
exec kubeforge dev demo -f "${1:-examples/quickstart.yaml}"
