#!/usr/bin/env bash
# Set up, start the local sandbox (API emulator, local KubeRay + Ray, S3, MLflow, operator),
# apply examples/quickstart.yaml (or the manifest given) and print each resource's phase and progress as they
# change, until every one is final; exits non-zero if one Failed. The sandbox stays up: `kubeforge dev down`.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export HF_HUB_OFFLINE=1 RAY_USAGE_STATS_ENABLED=0 PATH="$PWD/.venv/bin:$PATH"
exec kubeforge dev demo -f "${1:-examples/quickstart.yaml}"
