"""Helm's uninstall hook (charts/kubeforge/templates/uninstall-hook.yaml): once the operator is gone, nothing
removes `kubeforge.dev/finalizer`, and a resource holding it blocks the deletion of its namespace (and of the
CRDs, when they are not kept). So, per the Helm value `uninstall.resources`:

- `orphan` (post-delete, the operator already deleted): remove the finalizer from every Kubeforge resource and
  leave the resources (their RayJobs and stored outputs) as they are;
- `delete` (pre-delete, the operator still running): delete every Kubeforge resource, give the operator
  `--timeout` seconds to finish them (children, storage per spec.deletionPolicy), then remove the finalizer
  from any still there.

    python -m kubeforge.uninstall --policy orphan|delete [--namespace NS] [--timeout SECONDS]
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from typing import Any, Optional

from kubeforge.api.kinds import KINDS
from kubeforge.api.meta import FINALIZER, GROUP, VERSION  # FINALIZER: kopf's, see kubeforge.main.configure

log = logging.getLogger("kubeforge.uninstall")


def _resources(api: Any, namespace: Optional[str]) -> list[tuple[str, dict]]:
    found = []
    for info in KINDS:
        if namespace:
            listed = api.list_namespaced_custom_object(GROUP, VERSION, namespace, info.plural)
        else:
            listed = api.list_cluster_custom_object(GROUP, VERSION, info.plural)
        found.extend((info.plural, item) for item in listed.get("items", []))
    return found


def _describe(plural: str, obj: dict) -> str:
    return f"{plural}/{obj['metadata']['namespace']}/{obj['metadata']['name']}"


def strip_finalizers(api: Any, namespace: Optional[str]) -> int:
    """Remove kubeforge.dev/finalizer from every resource holding it; how many still held it when looked at."""
    from kubernetes.client.exceptions import ApiException

    held = 0
    for plural, obj in _resources(api, namespace):
        meta = obj["metadata"]
        if FINALIZER not in (meta.get("finalizers") or []):
            continue
        held += 1
        # resourceVersion makes the patch fail (409) rather than drop a finalizer added meanwhile by someone else.
        body = {"metadata": {"finalizers": [f for f in meta["finalizers"] if f != FINALIZER],
                             "resourceVersion": meta["resourceVersion"]}}
        try:
            api.patch_namespaced_custom_object(GROUP, VERSION, meta["namespace"], plural, meta["name"], body,
                                               _content_type="application/merge-patch+json")
            log.info("removed %s from %s", FINALIZER, _describe(plural, obj))
        except ApiException as error:
            if error.status not in (404, 409):
                raise
    return held


def delete_all(api: Any, namespace: Optional[str]) -> None:
    from kubernetes.client.exceptions import ApiException

    for plural, obj in _resources(api, namespace):
        if obj["metadata"].get("deletionTimestamp"):
            continue
        try:
            api.delete_namespaced_custom_object(GROUP, VERSION, obj["metadata"]["namespace"], plural,
                                                obj["metadata"]["name"])
            log.info("deleting %s", _describe(plural, obj))
        except ApiException as error:
            if error.status != 404:
                raise


def run(api: Any, policy: str, namespace: Optional[str], timeout: float, poll: float = 2.0) -> int:
    """0 when no Kubeforge resource is left holding the finalizer; 1 (with one line per resource) otherwise."""
    deadline = time.monotonic() + timeout
    if policy == "delete":
        delete_all(api, namespace)
        while _resources(api, namespace) and time.monotonic() < deadline:
            time.sleep(poll)
        left = _resources(api, namespace)
        if left:
            log.warning("the operator did not finish %d resources within %ss: removing its finalizer from them",
                        len(left), timeout)
    # An operator still shutting down may add the finalizer back once: pass until a pass finds none holding it.
    while strip_finalizers(api, namespace) and time.monotonic() < deadline:
        time.sleep(poll)
    stuck = [(p, o) for p, o in _resources(api, namespace) if FINALIZER in (o["metadata"].get("finalizers") or [])]
    for plural, obj in stuck:
        log.error("%s still holds %s: remove it with kubectl patch %s %s -n %s --type merge -p "
                  "'{\"metadata\":{\"finalizers\":null}}'", _describe(plural, obj), FINALIZER, plural,
                  obj["metadata"]["name"], obj["metadata"]["namespace"])
    return 1 if stuck else 0


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kubeforge.uninstall", description=__doc__.split("\n\n")[0])
    parser.add_argument("--policy", choices=["orphan", "delete"], required=True)
    parser.add_argument("--namespace", help="only this namespace (the chart's settings.watchNamespace)")
    parser.add_argument("--timeout", type=float, default=300, help="seconds (default 300)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    from kubernetes import client

    from kubeforge.cluster import load_kube_config

    load_kube_config()
    return run(client.CustomObjectsApi(), args.policy, args.namespace, args.timeout)


if __name__ == "__main__":
    sys.exit(main())
