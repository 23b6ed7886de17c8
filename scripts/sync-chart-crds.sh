#!/usr/bin/env bash
# Copy the generated CRDs (crds/, produced by `kubeforge crds generate`) into the Helm chart.
# The chart ships exactly these files; tests/chart/test_chart.py fails when they drift.
#   scripts/sync-chart-crds.sh           write charts/kubeforge/files/crds/ (templates/crds.yaml renders them)
#   scripts/sync-chart-crds.sh --check   exit 1 if the chart's CRDs differ
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
src="${root}/crds"
dst="${root}/charts/kubeforge/files/crds"

if [[ "${1:-}" == "--check" ]]; then
  if diff -r -q "${src}" "${dst}"; then
    echo "chart CRDs are in sync with crds/"
    exit 0
  fi
  echo "chart CRDs differ from crds/: run scripts/sync-chart-crds.sh" >&2
  exit 1
fi

mkdir -p "${dst}"
# Remove CRDs that no longer exist upstream, then copy the current set.
find "${dst}" -maxdepth 1 -type f -name '*.yaml' -delete
cp "${src}"/*.yaml "${dst}/"
echo "synced $(find "${dst}" -maxdepth 1 -name '*.yaml' | wc -l) CRDs into ${dst#"${root}"/}"
