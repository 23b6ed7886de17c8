#!/usr/bin/env bash
# Real-cluster end-to-end test: kind + KubeRay + MinIO + MLflow + the Kubeforge chart, then the quickstart
# FineTune must become Ready. Needs docker, kind, kubectl and helm on PATH, and network access.
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
TAG="${TAG:-e2e}"
OPERATOR_IMAGE="kubeforge-operator:${TAG}"
WORKLOADS_IMAGE="kubeforge-workloads:${TAG}"
# CPU-only kind: the CPU Ray image, no `gpu` extra (vLLM, bitsandbytes), the tests' versions and CPU torch.
WORKLOADS_BASE="${WORKLOADS_BASE:-rayproject/ray:${RAY_VERSION}-py311-cpu}"
WORKLOAD_EXTRAS="${WORKLOAD_EXTRAS:-workloads}"
CONSTRAINTS="${CONSTRAINTS:-constraints-cpu.txt}"
TORCH_INDEX_URL="${TORCH_INDEX_URL:-https://download.pytorch.org/whl/cpu}"
SKIP_BUILD="${SKIP_BUILD:-0}"
KEEP_CLUSTER="${KEEP_CLUSTER:-1}"
TIMEOUT="${TIMEOUT:-30m}"

DEPS_NS=kubeforge-deps
SYSTEM_NS=kubeforge-system
WORK_NS=kubeforge-e2e
BUCKET=kubeforge
S3_USER=kubeforge
S3_PASSWORD="${S3_PASSWORD:-kubeforge-e2e-secret}"
S3_URL="http://minio.${DEPS_NS}.svc.cluster.local:9000"
MLFLOW_URL="http://mlflow.${DEPS_NS}.svc.cluster.local:5000"

log() { printf '\n==> %s\n' "$*"; }

need() {
  local tool
  for tool in "$@"; do
    command -v "${tool}" >/dev/null 2>&1 || { echo "missing required tool: ${tool}" >&2; exit 2; }
  done
}

diagnostics() {
  local rc=$?
  if [[ ${rc} -ne 0 ]]; then
    log "FAILED (exit ${rc}); diagnostics"
    kubectl get genai,rayjobs,rayclusters,pods -A -o wide || true
    kubectl -n "${WORK_NS}" describe finetune quickstart || true
    kubectl -n "${WORK_NS}" get events --sort-by=.lastTimestamp | tail -n 50 || true
    kubectl -n "${SYSTEM_NS}" logs deploy/kubeforge --tail=200 || true
    kubectl -n kuberay-system logs deploy/kuberay-operator --tail=100 || true
  fi
  if [[ "${KEEP_CLUSTER}" != "1" ]]; then
    kind delete cluster --name "${CLUSTER}" || true
  fi
  exit "${rc}"
}

need docker kind kubectl helm
trap diagnostics EXIT

log "kind cluster ${CLUSTER}"
if ! kind get clusters | grep -qx "${CLUSTER}"; then
  kind create cluster --name "${CLUSTER}" --image "${KIND_NODE_IMAGE}" --wait 120s
fi
kubectl config use-context "kind-${CLUSTER}"

if [[ "${SKIP_BUILD}" != "1" ]]; then
  log "building images"
  docker build --target operator -t "${OPERATOR_IMAGE}" "${ROOT}"
  docker build --target workloads -t "${WORKLOADS_IMAGE}" \
    --build-arg "RAY_VERSION=${RAY_VERSION}" \
    --build-arg "RAY_IMAGE=${WORKLOADS_BASE}" \
    --build-arg "WORKLOAD_EXTRAS=${WORKLOAD_EXTRAS}" \
    --build-arg "CONSTRAINTS=${CONSTRAINTS}" \
    --build-arg "TORCH_INDEX_URL=${TORCH_INDEX_URL}" "${ROOT}"
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

log "bucket and seed data (tiny Llama, datasets) via the workloads image"
kubectl -n "${WORK_NS}" delete job kubeforge-seed --ignore-not-found
kubectl apply -n "${WORK_NS}" -f - <<YAML
apiVersion: batch/v1
kind: Job
metadata: {name: kubeforge-seed}
spec:
  backoffLimit: 2
  template:
    spec:
      restartPolicy: Never
      containers:
        - name: seed
          image: ${WORKLOADS_IMAGE}
          imagePullPolicy: Never
          envFrom: [{secretRef: {name: kubeforge-workload-env}}]
          env: [{name: HF_HUB_OFFLINE, value: "1"}]
          command: ["bash", "-c"]
          args:
            - >-
              python -c "import boto3; s3 = boto3.client('s3');
              s3.create_bucket(Bucket='${BUCKET}') if '${BUCKET}' not in
              [b['Name'] for b in s3.list_buckets()['Buckets']] else None"
              && python -m kubeforge_workloads.seed --bucket ${BUCKET}
YAML
kubectl -n "${WORK_NS}" wait --for=condition=Complete job/kubeforge-seed --timeout=15m

log "Kubeforge chart"
"${ROOT}/scripts/sync-chart-crds.sh" --check
helm upgrade --install kubeforge "${ROOT}/charts/kubeforge" \
  --namespace "${SYSTEM_NS}" --create-namespace \
  --set fullnameOverride=kubeforge \
  --set image.repository="${OPERATOR_IMAGE%:*}" --set image.tag="${TAG}" --set image.pullPolicy=Never \
  --set workloadImage.repository="${WORKLOADS_IMAGE%:*}" --set workloadImage.tag="${TAG}" \
  --set settings.bucket="${BUCKET}" \
  --set settings.s3EndpointUrl="${S3_URL}" \
  --set settings.mlflowTrackingUri="${MLFLOW_URL}" \
  --set settings.rayVersion="${RAY_VERSION}" \
  --set settings.reconcilePeriodSeconds=5 \
  --set credentials.existingSecret=kubeforge-s3 \
  --wait --timeout 5m
for crd in trainingjobs finetunes vectorindexes servingendpoints evalruns; do
  kubectl wait --for=condition=Established "crd/${crd}.kubeforge.dev" --timeout=60s
done

log "quickstart FineTune"
kubectl -n "${WORK_NS}" apply -f "${ROOT}/examples/quickstart.yaml"
kubectl -n "${WORK_NS}" get finetune quickstart
kubectl -n "${WORK_NS}" wait --for=condition=Ready finetune/quickstart --timeout="${TIMEOUT}"

log "result"
kubectl -n "${WORK_NS}" get genai
phase="$(kubectl -n "${WORK_NS}" get finetune quickstart -o jsonpath='{.status.phase}')"
model="$(kubectl -n "${WORK_NS}" get finetune quickstart -o jsonpath='{.status.output.modelUri}')"
echo "phase=${phase} model=${model}"
[[ "${phase}" == "Succeeded" ]]
log "PASS"
