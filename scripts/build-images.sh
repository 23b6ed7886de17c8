#!/usr/bin/env bash
# Build (and push) the images the Helm chart runs, tagged as its values expect by default:
#   <registry>/kubeforge-operator:<tag>        Dockerfile target `operator` (no ML stack, uid 10001)
#   <registry>/kubeforge-workloads:<tag>       target `workloads` on Ray's CUDA image (extras workloads,gpu)
#   <registry>/kubeforge-workloads:<tag>-cpu   target `workloads` on Ray's CPU image (extras workloads, the
#                                              tests' versions from constraints-cpu.txt, CPU-only torch)
# <tag> defaults to the chart's appVersion, <registry> to ghcr.io/kubeforge (the chart's default repositories),
# the Ray version to the chart's settings.rayVersion. At the end it prints the `helm --set` flags for the
# images it built.
#
#   scripts/build-images.sh                                   build all three
#   scripts/build-images.sh --registry registry.example.com/ml --push
#   scripts/build-images.sh --only operator,workloads-cpu --tag dev
#   scripts/build-images.sh --dry-run                         print the commands, run nothing
# Engine: docker, or CONTAINER_ENGINE=podman (any engine taking `build --target --build-arg -t` and `push`).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
chart="${root}/charts/kubeforge"

usage() {
  sed -n '2,15p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
}

die() {
  echo "build-images.sh: $*" >&2
  exit 2
}

# appVersion from Chart.yaml, settings.rayVersion from values.yaml (quotes stripped).
chart_field() {
  sed -n "s/^$1:[[:space:]]*//p" "$2" | head -n 1 | tr -d "\"'"
}
values_ray_version() {
  sed -n 's/^[[:space:]]*rayVersion:[[:space:]]*//p' "${chart}/values.yaml" | head -n 1 | tr -d "\"'"
}

registry="ghcr.io/kubeforge"
tag="$(chart_field appVersion "${chart}/Chart.yaml")"
ray_version="$(values_ray_version)"
only="operator,workloads,workloads-cpu"
push=0
dry_run=0
engine="${CONTAINER_ENGINE:-docker}"

while (($#)); do
  case "$1" in
    --registry) registry="${2:?--registry needs a value}"; shift 2 ;;
    --tag) tag="${2:?--tag needs a value}"; shift 2 ;;
    --ray-version) ray_version="${2:?--ray-version needs a value}"; shift 2 ;;
    --only) only="${2:?--only needs a value}"; shift 2 ;;
    --push) push=1; shift ;;
    --dry-run) dry_run=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) die "unknown option '$1' (see --help)" ;;
  esac
done

registry="${registry%/}"
[[ -n "${tag}" ]] || die "no tag: charts/kubeforge/Chart.yaml has no appVersion; pass --tag"
[[ "${tag}" =~ ^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$ ]] || die "--tag '${tag}' is not a valid image tag"
[[ -n "${ray_version}" ]] || die "no Ray version: set settings.rayVersion in values.yaml or pass --ray-version"
for image in ${only//,/ }; do
  case "${image}" in
    operator|workloads|workloads-cpu) ;;
    *) die "--only: unknown image '${image}' (operator, workloads, workloads-cpu)" ;;
  esac
done
if ((! dry_run)) && ! command -v "${engine}" >/dev/null 2>&1; then
  die "container engine '${engine}' not found: install docker, or set CONTAINER_ENGINE (e.g. podman)"
fi

run() {
  echo "+ $*"
  if ((! dry_run)); then
    "$@"
  fi
}

operator_image="${registry}/kubeforge-operator:${tag}"
workloads_image="${registry}/kubeforge-workloads:${tag}"
built=()

for image in ${only//,/ }; do
  case "${image}" in
    operator)
      run "${engine}" build --target operator --build-arg "RAY_VERSION=${ray_version}" \
        -t "${operator_image}" "${root}"
      built+=("${operator_image}") ;;
    workloads)
      run "${engine}" build --target workloads --build-arg "RAY_VERSION=${ray_version}" \
        --build-arg "RAY_IMAGE=rayproject/ray:${ray_version}-py311-gpu" \
        --build-arg "WORKLOAD_EXTRAS=workloads,gpu" -t "${workloads_image}" "${root}"
      built+=("${workloads_image}") ;;
    workloads-cpu)
      run "${engine}" build --target workloads --build-arg "RAY_VERSION=${ray_version}" \
        --build-arg "RAY_IMAGE=rayproject/ray:${ray_version}-py311-cpu" \
        --build-arg "WORKLOAD_EXTRAS=workloads" --build-arg "CONSTRAINTS=constraints-cpu.txt" \
        --build-arg "TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu" -t "${workloads_image}-cpu" "${root}"
      built+=("${workloads_image}-cpu") ;;
  esac
done

if ((push)); then
  for image in "${built[@]}"; do
    run "${engine}" push "${image}"
  done
fi

echo "helm flags for these images (use the -cpu tag on clusters without GPUs):"
echo "  --set image.repository=${registry}/kubeforge-operator --set image.tag=${tag}" \
  "--set workloadImage.repository=${registry}/kubeforge-workloads --set workloadImage.tag=${tag}"
