"""A Kubernetes API server emulator for the local sandbox and tests (purpose-built on aiohttp, in memory).

Serves discovery, OpenAPI v2/v3, CRUD with Status errors, resourceVersion conflicts, generation, the status
subresource, list/watch with selectors, finalizers, ownerReference garbage collection, merge/JSON/strategic
patches, server-side apply with managedFields, and CRD schema validation (defaults, pruning, CEL).
See BEHAVIOURS.md for what is and is not implemented.

As a process (plain HTTP, no auth):

    python -m kubeforge.dev.apiserver --host 127.0.0.1 --port 17000 --crds crds --crds ../shared/kuberay-crds \\
        [--ready-file PATH]

In-process, in the running event loop:

    async with ApiServer(port=0, crd_dirs=[...]) as srv:
        srv.url

For synchronous pytest fixtures, in a background thread:

    with ApiServer(crd_dirs=[...]) as srv: ...          # or
    url, stop = run_in_thread(crd_dirs=[...]); ...; stop()

`kubeconfig(url)` returns a kubeconfig dict (cluster/user/context "kubeforge-dev", namespace "default").
"""

from kubeforge.dev.apiserver.server import ApiServer, kubeconfig, run_in_thread

__all__ = ["ApiServer", "kubeconfig", "run_in_thread"]
