"""A Kubernetes API server emulator for the local sandbox (purpose-built on aiohttp).

It serves discovery, OpenAPI v2/v3, CRUD with Status errors, resourceVersion conflicts, generation,
the status subresource, list/watch with selectors, finalizers, ownerReference garbage collection,
merge/JSON/apply patches and CRD schema validation (defaults, pruning, CEL). See BEHAVIOURS.md.

    python -m kubeforge.dev.apiserver --port 17000 --crds crds --crds ../shared/kuberay-crds

    with ApiServer(crd_dirs=[...]) as server:   # in-process, on a free port, in a background thread
        server.url
"""

from kubeforge.dev.apiserver.server import ApiServer, kubeconfig

__all__ = ["ApiServer", "kubeconfig"]
