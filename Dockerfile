# syntax=docker/dockerfile:1.7
# Kubeforge images. Two targets:
#   docker build --target operator  -t ghcr.io/kubeforge/kubeforge-operator:0.1.0 .
#   docker build --target workloads -t ghcr.io/kubeforge/kubeforge-workloads:0.1.0 .
# The operator image carries no ML stack (no torch, no ray); the workload image is what Ray head and worker
# pods run (KUBEFORGE_WORKLOAD_IMAGE / Helm value workloadImage), built on Ray's CUDA image.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm
# Must match kubeforge.settings.Settings.ray_version (Helm: settings.rayVersion): RayJobs declare it.
ARG RAY_VERSION=2.60.0
ARG RAY_IMAGE=rayproject/ray:${RAY_VERSION}-py311-gpu

# ---------------------------------------------------------------------------------------------------------
# build: the operator's virtual environment, without the `workloads` extra.
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
RUN python -m venv /opt/venv
COPY pyproject.toml README.md constraints-cpu.txt ./
COPY operator/ operator/
COPY workloads/ workloads/
# The versions the tests ran (scripts/lock.py).
RUN /opt/venv/bin/pip install --upgrade pip \
 && /opt/venv/bin/pip install . -c constraints-cpu.txt \
 && /opt/venv/bin/kubeforge --help >/dev/null

# ---------------------------------------------------------------------------------------------------------
# operator: what the Helm chart's Deployment runs (`kubeforge operator`).
FROM ${PYTHON_IMAGE} AS operator
ARG RAY_VERSION
LABEL org.opencontainers.image.title="kubeforge-operator" \
      org.opencontainers.image.description="Kubeforge operator (kopf) for GenAI workloads on KubeRay" \
      org.opencontainers.image.source="https://github.com/kubeforge/kubeforge" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --system --gid 10001 kubeforge \
 && useradd --system --uid 10001 --gid 10001 --home-dir /tmp --no-create-home \
      --shell /usr/sbin/nologin kubeforge
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:${PATH} \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    KUBEFORGE_RAY_VERSION=${RAY_VERSION}
WORKDIR /tmp
# Numeric user, so that runAsNonRoot can be verified by the kubelet.
USER 10001:10001
ENTRYPOINT ["kubeforge"]
CMD ["operator"]

# ---------------------------------------------------------------------------------------------------------
# workloads: Ray head/worker image with CUDA, PyTorch, transformers, peft, vLLM, bitsandbytes and
# kubeforge_workloads (entrypoints: python -m kubeforge_workloads.<kind>).
FROM ${RAY_IMAGE} AS workloads
ARG RAY_VERSION
# GPU clusters: `workloads,gpu` under constraints-gpu.txt (vLLM pins its own torch and caps transformers).
# CPU-only clusters such as kind: WORKLOAD_EXTRAS=workloads, CONSTRAINTS=constraints-cpu.txt (the tests' versions),
# a -cpu RAY_IMAGE and TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu (PyPI's torch is the CUDA build).
ARG WORKLOAD_EXTRAS=workloads,gpu
ARG CONSTRAINTS=constraints-gpu.txt
ARG TORCH_INDEX_URL=
LABEL org.opencontainers.image.title="kubeforge-workloads" \
      org.opencontainers.image.description="Kubeforge Ray workloads (CUDA)" \
      org.opencontainers.image.source="https://github.com/kubeforge/kubeforge" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HOME=/home/ray/.cache/huggingface
# Ray's images run as the non-root user `ray` (uid 1000, group users/100) owning its Python env. Numeric, so
# that the kubelet can verify runAsNonRoot (the Ray pods' default securityContext, restricted Pod Security).
USER 1000:100
WORKDIR /home/ray/kubeforge
COPY --chown=1000:100 pyproject.toml README.md constraints-cpu.txt constraints-gpu.txt ./
COPY --chown=1000:100 operator/ operator/
COPY --chown=1000:100 workloads/ workloads/
# Keep the image's Ray: a different Ray in the pods than in rayVersion breaks the cluster (the locks pin the same).
RUN pip install ${TORCH_INDEX_URL:+--extra-index-url "${TORCH_INDEX_URL}"} -c "${CONSTRAINTS}" \
      ".[${WORKLOAD_EXTRAS}]" "ray[default,train,serve,data]==${RAY_VERSION}" \
 && python -c "import kubeforge_workloads, torch, transformers, peft, ray; assert ray.__version__ == '${RAY_VERSION}'"
