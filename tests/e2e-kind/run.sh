#!/usr/bin/env bash
# Real-cluster end-to-end test: kind + KubeRay + MinIO + MLflow + the Kubeforge chart, then every kind from the
# shipped examples, stage after stage (STAGES): each Kubeforge resource a stage applies must become Ready, an
# EvalRun's gate must hold (condition Passed) and a ServingEndpoint must list its models on /v1/models behind its
# API key. Needs docker, kind, kubectl, helm and curl on PATH, and network access.
# Not run in this repository's sandboxed CI (no container engine there); see README.md.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"

CLUSTER="${CLUSTER:-kubeforge-e2e}"
KIND_NODE_IMAGE="${KIND_NODE_IMAGE:-kindest/node:v1.32.2}"
KUBERAY_VERSION="${KUBERAY_VERSION:-1.4.2}"
RAY_VERSION="${RAY_VERSION:-2.60.0}"
MINIO_IMAGE="${MINIO_IMAGE:-quay.io/minio/minio:RELEASE.2024-12-18T13-15-44Z}"
# The MLflow server is the version of the client the workloads run (constraints-cpu.txt).
MLFLOW_VERSION="${MLFLOW_VERSION:-$(sed -n 's/^mlflow==//p' "${ROOT}/constraints-cpu.txt")}"
MLFLOW_IMAGE="${MLFLOW_IMAGE:-ghcr.io/mlflow/mlflow:v${MLFLOW_VERSION}}"
# Images come from scripts/build-images.sh (operator, and workloads-cpu: kind has no GPU); kind loads them from
# the local engine, so the registry is only a name.
IMAGE_REGISTRY="${IMAGE_REGISTRY:-kubeforge.local}"
TAG="${TAG:-e2e}"
OPERATOR_IMAGE="${IMAGE_REGISTRY}/kubeforge-operator:${TAG}"
WORKLOADS_IMAGE="${IMAGE_REGISTRY}/kubeforge-workloads:${TAG}-cpu"
SKIP_BUILD="${SKIP_BUILD:-0}"
KEEP_CLUSTER="${KEEP_CLUSTER:-1}"
# How long each resource may take to become Ready (kubectl duration: 90s, 30m, 1h).
TIMEOUT="${TIMEOUT:-30m}"
SERVE_LOCAL_PORT="${SERVE_LOCAL_PORT:-18000}"

DEPS_NS=kubeforge-deps
SYSTEM_NS=kubeforge-system
WORK_NS=kubeforge-e2e
BUCKET=kubeforge
S3_USER=kubeforge
S3_PASSWORD="${S3_PASSWORD:-kubeforge-e2e-secret}"
S3_URL="http://minio.${DEPS_NS}.svc.cluster.local:9000"
MLFLOW_URL="http://mlflow.${DEPS_NS}.svc.cluster.local:5000"
# Every Kubeforge kind (tests/chart/test_e2e_script.py checks this is kubeforge.api.KINDS' plurals).
KUBEFORGE_RESOURCES="trainingjobs,finetunes,vectorindexes,servingendpoints,evalruns"

# name:files (relative to the repository root), run one after another, each alone on the cluster: the previous
# stage's Ray clusters are gone before the next starts (the chart's settings.rayjobTtlSeconds=0 below), so the
# node needs room for the largest stage only (README.md; tests/chart/test_e2e_resources.py computes it).
# Together they apply every kind (tests/chart/test_e2e_script.py fails on a kind no stage applies).
STAGES=(
  "quickstart:examples/quickstart.yaml"
  "pretrain:examples/trainingjob.yaml"
  "pipeline:examples/pipeline/"
)

log() { printf '\n==> %s\n' "$*"; }

die() {
  echo "e2e: $*" >&2
  exit 1
}

need() {
  local tool
  for tool in "$@"; do
    command -v "${tool}" >/dev/null 2>&1 || { echo "missing required tool: ${tool}" >&2; exit 2; }
  done
}

# 90s, 30m, 1h or plain seconds -> seconds.
duration_seconds() {
  [[ "$1" =~ ^([0-9]+)([smh]?)$ ]] || return 1
  case "${BASH_REMATCH[2]}" in
    h) echo $((BASH_REMATCH[1] * 3600)) ;;
    m) echo $((BASH_REMATCH[1] * 60)) ;;
    *) echo "${BASH_REMATCH[1]}" ;;
  esac
}

# The one image build of the project (also what users run); extra arguments pass through (tests use --dry-run).
# shellcheck disable=SC2120  # only the tests pass arguments
build_images() {
  "${ROOT}/scripts/build-images.sh" --only operator,workloads-cpu --registry "${IMAGE_REGISTRY}" --tag "${TAG}" \
    --ray-version "${RAY_VERSION}" "$@"
}

# Until resource ($1, kind/name) is Ready: `kubectl wait --for=condition=Ready` in slices, so that a resource
# that ends Failed or whose spec the operator rejects fails the run at once instead of after TIMEOUT.
wait_ready() {
  local resource="$1" deadline phase stalled
  deadline=$((SECONDS + TIMEOUT_SECONDS))
  until kubectl -n "${WORK_NS}" wait --for=condition=Ready "${resource}" --timeout=30s >/dev/null 2>&1; do
    kubectl -n "${WORK_NS}" get "${resource}" --no-headers 2>/dev/null || true
    phase="$(kubectl -n "${WORK_NS}" get "${resource}" -o jsonpath='{.status.phase}')"
    stalled="$(kubectl -n "${WORK_NS}" get "${resource}" \
      -o jsonpath='{.status.conditions[?(@.type=="Stalled")].reason}')"
    if [[ "${phase}" == "Failed" || "${stalled}" == "InvalidSpec" ]]; then
      die "${resource} ended ${phase:-Stalled} (${stalled}): $(kubectl -n "${WORK_NS}" get "${resource}" \
        -o jsonpath='{.status.message}')"
    fi
    ((SECONDS < deadline)) || die "${resource} not Ready within ${TIMEOUT}"
    sleep 2
  done
  echo "${resource} Ready: $(kubectl -n "${WORK_NS}" get "${resource}" -o jsonpath='{.status.phase} {.status.output}')"
}

# An EvalRun is Ready only when its gate held; its own condition Passed says so to users, check it too.
check_evalrun() {
  local name="$1"
  kubectl -n "${WORK_NS}" wait --for=condition=Passed "evalrun/${name}" --timeout=10s
  kubectl -n "${WORK_NS}" get evalrun "${name}" -o jsonpath='{.status.summary}{"\n"}'
}

PORT_FORWARD_PID=""
stop_port_forward() {
  if [[ -n "${PORT_FORWARD_PID}" ]]; then
    kill "${PORT_FORWARD_PID}" 2>/dev/null || true
    wait "${PORT_FORWARD_PID}" 2>/dev/null || true
    PORT_FORWARD_PID=""
  fi
}

# A ServingEndpoint as a user reaches it from outside the cluster: port-forward to the Service in status.url, GET
# /v1/models with the first key of its API key Secret (and 401 without it), every adapter listed.
check_endpoint() {
  local name="$1" url service port path secret key_name key models adapter code
  url="$(kubectl -n "${WORK_NS}" get servingendpoint "${name}" -o jsonpath='{.status.url}')"
  [[ "${url}" =~ ^http://([^./:]+)[^/:]*:([0-9]+)(/.*)$ ]] \
    || die "servingendpoint/${name}: status.url '${url}' is not http://<service>.<namespace>...:<port>/<path>"
  service="${BASH_REMATCH[1]}" port="${BASH_REMATCH[2]}" path="${BASH_REMATCH[3]}"
  kubectl -n "${WORK_NS}" port-forward "service/${service}" "${SERVE_LOCAL_PORT}:${port}" >/dev/null &
  PORT_FORWARD_PID=$!
  secret="$(kubectl -n "${WORK_NS}" get servingendpoint "${name}" -o jsonpath='{.spec.auth.apiKeySecretRef.name}')"
  local -a auth=()
  if [[ -n "${secret}" ]]; then
    key_name="$(kubectl -n "${WORK_NS}" get servingendpoint "${name}" -o jsonpath='{.spec.auth.apiKeySecretRef.key}')"
    key="$(kubectl -n "${WORK_NS}" get secret "${secret}" -o go-template \
      --template="{{index .data \"${key_name:-api-keys}\" | base64decode}}")"
    key="${key%%$'\n'*}"
    auth=(-H "Authorization: Bearer ${key}")
    code="$(curl -sS --retry 15 --retry-connrefused --retry-delay 2 -o /dev/null -w '%{http_code}' \
      "http://127.0.0.1:${SERVE_LOCAL_PORT}${path}/models")" \
      || die "servingendpoint/${name}: nothing answered ${path}/models through port-forward to service/${service}"
    [[ "${code}" == "401" ]] || die "servingendpoint/${name}: /v1/models without an API key answered ${code}, not 401"
  fi
  models="$(curl -fsS --retry 15 --retry-connrefused --retry-delay 2 ${auth[@]+"${auth[@]}"} \
    "http://127.0.0.1:${SERVE_LOCAL_PORT}${path}/models")" \
    || die "servingendpoint/${name}: GET ${path}/models${secret:+ with the first key of Secret ${secret}} failed"
  stop_port_forward
  echo "${models}"
  for adapter in $(kubectl -n "${WORK_NS}" get servingendpoint "${name}" -o jsonpath='{.spec.adapters[*].name}'); do
    [[ "${models}" == *"\"id\":\"${adapter}\""* ]] || die "servingendpoint/${name}: /v1/models does not list ${adapter}"
  done
}

# Apply a stage's files the way a user does, then check every Kubeforge resource they hold, in file order
# (dependencies first in the examples; a dependent waits for them anyway).
run_stage() {
  local name="$1" files="$2" file resource
  local -a args=()
  for file in ${files}; do
    args+=(-f "${ROOT}/${file}")
  done
  log "stage ${name}: kubectl apply ${files}"
  local applied
  applied="$(kubectl -n "${WORK_NS}" apply "${args[@]}" -o name)"
  echo "${applied}"
  [[ "${applied}" == *".kubeforge.dev/"* ]] || die "stage ${name} applied no Kubeforge resource"
  for resource in ${applied}; do
    [[ "${resource}" == *".kubeforge.dev/"* ]] || continue
    wait_ready "${resource}"
    case "${resource}" in
      evalrun.kubeforge.dev/*) check_evalrun "${resource#*/}" ;;
      servingendpoint.kubeforge.dev/*) check_endpoint "${resource#*/}" ;;
    esac
  done
  kubectl -n "${WORK_NS}" get genai
}

# A stage's RayJob clusters are deleted when their jobs finish (rayjobTtlSeconds=0); the next stage starts once
# their pods are gone, so that it has the node to itself.
wait_ray_pods_gone() {
  local deadline=$((SECONDS + 300))
  while [[ -n "$(kubectl -n "${WORK_NS}" get rayclusters -o name)" \
        || -n "$(kubectl -n "${WORK_NS}" get pods -l ray.io/node-type -o name)" ]]; do
    ((SECONDS < deadline)) || die "the Ray clusters of the previous stage are still there after 5m"
    sleep 5
  done
}

diagnostics() {
  local rc=$? pod
  stop_port_forward
  if [[ ${rc} -ne 0 ]]; then
    log "FAILED (exit ${rc}); diagnostics"
    kubectl get genai,rayjobs,rayservices,rayclusters,pods -A -o wide || true
    kubectl -n "${WORK_NS}" describe "${KUBEFORGE_RESOURCES}" || true
    kubectl -n "${WORK_NS}" describe rayjobs,rayservices || true
    kubectl -n "${WORK_NS}" get events --sort-by=.lastTimestamp | tail -n 80 || true
    kubectl -n "${SYSTEM_NS}" logs deploy/kubeforge --tail=300 || true
    kubectl -n kuberay-system logs deploy/kuberay-operator --tail=100 || true
    # Ray heads (drivers), workers, RayJob submitters and the seed pod.
    for pod in $(kubectl -n "${WORK_NS}" get pods -o name 2>/dev/null); do
      log "${pod}"
      kubectl -n "${WORK_NS}" logs "${pod}" --all-containers --tail=60 || true
    done
  fi
  if [[ "${KEEP_CLUSTER}" != "1" ]]; then
    kind delete cluster --name "${CLUSTER}" || true
  fi
  exit "${rc}"
}

# Sourced (tests/chart/test_e2e_*.py read the configuration and call build_images --dry-run): stop here.
[[ "${BASH_SOURCE[0]}" == "$0" ]] || return 0

TIMEOUT_SECONDS="$(duration_seconds "${TIMEOUT}")" || die "TIMEOUT='${TIMEOUT}' is not a duration such as 90s, 30m or 1h"
need docker kind kubectl helm curl
trap diagnostics EXIT

log "kind cluster ${CLUSTER}"
if ! kind get clusters | grep -qx "${CLUSTER}"; then
  kind create cluster --name "${CLUSTER}" --image "${KIND_NODE_IMAGE}" --wait 120s
fi
kubectl config use-context "kind-${CLUSTER}"

if [[ "${SKIP_BUILD}" != "1" ]]; then
  log "building images"
  build_images
fi
kind load docker-image --name "${CLUSTER}" "${OPERATOR_IMAGE}" "${WORKLOADS_IMAGE}"

log "KubeRay operator ${KUBERAY_VERSION}"
helm repo add kuberay https://ray-project.github.io/kuberay-helm/ --force-update >/dev/null
helm upgrade --install kuberay-operator kuberay/kuberay-operator --version "${KUBERAY_VERSION}" \
  --namespace kuberay-system --create-namespace --wait --timeout 5m

log "MinIO and MLflow in ${DEPS_NS}"
kubectl create namespace "${DEPS_NS}" --dry-run=client -o yaml | kubectl apply -f -
kubectl apply -n "${DEPS_NS}" -f - <<YAML
apiVersion: apps/v1
kind: Deployment
metadata: {name: minio, labels: {app: minio}}
spec:
  replicas: 1
  selector: {matchLabels: {app: minio}}
  template:
    metadata: {labels: {app: minio}}
    spec:
      containers:
        - name: minio
          image: ${MINIO_IMAGE}
          args: ["server", "/data", "--address", ":9000"]
          env:
            - {name: MINIO_ROOT_USER, value: "${S3_USER}"}
            - {name: MINIO_ROOT_PASSWORD, value: "${S3_PASSWORD}"}
          ports: [{containerPort: 9000}]
          readinessProbe: {httpGet: {path: /minio/health/ready, port: 9000}, periodSeconds: 5}
          volumeMounts: [{name: data, mountPath: /data}]
      volumes: [{name: data, emptyDir: {}}]
---
apiVersion: v1
kind: Service
metadata: {name: minio}
spec:
  selector: {app: minio}
  ports: [{port: 9000, targetPort: 9000}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: mlflow, labels: {app: mlflow}}
spec:
  replicas: 1
  selector: {matchLabels: {app: mlflow}}
  template:
    metadata: {labels: {app: mlflow}}
    spec:
      containers:
        - name: mlflow
          image: ${MLFLOW_IMAGE}
          # Artifacts are proxied by the server (mlflow-artifacts:/), so clients need no extra store access.
          # MLflow 3 answers 403 to Host headers other than localhost and IP addresses unless allowed.
          command: ["mlflow", "server", "--host", "0.0.0.0", "--port", "5000",
                    "--backend-store-uri", "sqlite:////mlflow/mlflow.db",
                    "--artifacts-destination", "/mlflow/artifacts", "--serve-artifacts",
                    "--allowed-hosts", "mlflow:*,mlflow.${DEPS_NS}:*,mlflow.${DEPS_NS}.svc:*,mlflow.${DEPS_NS}.svc.cluster.local:*"]
          ports: [{containerPort: 5000}]
          readinessProbe: {httpGet: {path: /health, port: 5000}, periodSeconds: 5}
          volumeMounts: [{name: data, mountPath: /mlflow}]
      volumes: [{name: data, emptyDir: {}}]
---
apiVersion: v1
kind: Service
metadata: {name: mlflow}
spec:
  selector: {app: mlflow}
  ports: [{port: 5000, targetPort: 5000}]
YAML
kubectl -n "${DEPS_NS}" rollout status deploy/minio --timeout=5m
kubectl -n "${DEPS_NS}" rollout status deploy/mlflow --timeout=5m

log "credentials Secrets"
s3_secret() {
  # $1 namespace, $2 name, $3.. extra --from-literal pairs
  local namespace="$1" name="$2"
  shift 2
  kubectl create namespace "${namespace}" --dry-run=client -o yaml | kubectl apply -f -
  kubectl -n "${namespace}" create secret generic "${name}" \
    --from-literal=AWS_ACCESS_KEY_ID="${S3_USER}" \
    --from-literal=AWS_SECRET_ACCESS_KEY="${S3_PASSWORD}" \
    --from-literal=AWS_DEFAULT_REGION=us-east-1 \
    --from-literal=AWS_ENDPOINT_URL="${S3_URL}" \
    "$@" --dry-run=client -o yaml | kubectl apply -f -
}
s3_secret "${SYSTEM_NS}" kubeforge-s3
s3_secret "${WORK_NS}" kubeforge-workload-env --from-literal=MLFLOW_TRACKING_URI="${MLFLOW_URL}"

# What `kubeforge dev up` seeds (kubeforge.dev.sandbox.seed): the tiny Llama, the docs Q&A datasets, and from the
# repository examples/corpus (VectorIndexes), examples/data/reviews.jsonl and examples/data/eval (EvalRuns),
# copied into a pod of the workloads image that runs the same `python -m kubeforge_workloads.seed`.
log "bucket and seed data via the workloads image"
kubectl -n "${WORK_NS}" delete pod kubeforge-seed --ignore-not-found --wait
kubectl apply -n "${WORK_NS}" -f - <<YAML
apiVersion: v1
kind: Pod
metadata: {name: kubeforge-seed}
spec:
  restartPolicy: Never
  activeDeadlineSeconds: 1800
  containers:
    - name: seed
      image: ${WORKLOADS_IMAGE}
      imagePullPolicy: Never
      envFrom: [{secretRef: {name: kubeforge-workload-env}}]
      env: [{name: HF_HUB_OFFLINE, value: "1"}]
      command: ["sleep", "1800"]
      resources: {requests: {cpu: 500m, memory: 1Gi}}
YAML
kubectl -n "${WORK_NS}" wait --for=condition=Ready pod/kubeforge-seed --timeout=5m
kubectl -n "${WORK_NS}" cp "${ROOT}/examples/corpus" kubeforge-seed:/tmp/corpus
kubectl -n "${WORK_NS}" cp "${ROOT}/examples/data/eval" kubeforge-seed:/tmp/eval
kubectl -n "${WORK_NS}" cp "${ROOT}/examples/data/reviews.jsonl" kubeforge-seed:/tmp/reviews.jsonl
kubectl -n "${WORK_NS}" exec kubeforge-seed -- python -c "import boto3; s3 = boto3.client('s3');
s3.create_bucket(Bucket='${BUCKET}') if '${BUCKET}' not in [b['Name'] for b in s3.list_buckets()['Buckets']] else None"
kubectl -n "${WORK_NS}" exec kubeforge-seed -- python -m kubeforge_workloads.seed --bucket "${BUCKET}" \
  --corpus /tmp/corpus --reviews /tmp/reviews.jsonl --eval /tmp/eval
kubectl -n "${WORK_NS}" delete pod kubeforge-seed --wait=false

log "Kubeforge chart"
"${ROOT}/scripts/sync-chart-crds.sh" --check
# The Ray head hosts only the drivers (num-cpus 0): 1 CPU / 4Gi instead of the chart's 2 / 8Gi, so the largest
# stage fits the machine README.md documents; finished RayJobs' clusters go at once (the next stage needs room).
helm upgrade --install kubeforge "${ROOT}/charts/kubeforge" \
  --namespace "${SYSTEM_NS}" --create-namespace \
  --set fullnameOverride=kubeforge \
  --set image.repository="${OPERATOR_IMAGE%:*}" --set image.tag="${TAG}" --set image.pullPolicy=Never \
  --set workloadImage.repository="${WORKLOADS_IMAGE%:*}" --set workloadImage.tag="${WORKLOADS_IMAGE##*:}" \
  --set settings.bucket="${BUCKET}" \
  --set settings.s3EndpointUrl="${S3_URL}" \
  --set settings.mlflowTrackingUri="${MLFLOW_URL}" \
  --set settings.rayVersion="${RAY_VERSION}" \
  --set settings.reconcilePeriodSeconds=5 \
  --set settings.rayjobTtlSeconds=0 \
  --set rayPods.head.cpus=1 --set rayPods.head.memory=4Gi \
  --set credentials.existingSecret=kubeforge-s3 \
  --wait --timeout 5m
for crd in ${KUBEFORGE_RESOURCES//,/ }; do
  kubectl wait --for=condition=Established "crd/${crd}.kubeforge.dev" --timeout=60s
done

first=1
for stage in "${STAGES[@]}"; do
  ((first)) || wait_ray_pods_gone
  first=0
  run_stage "${stage%%:*}" "${stage#*:}"
done

log "result"
kubectl -n "${WORK_NS}" get genai
log "PASS"
