"""Strategic merge of Ray cluster specs, as `kubectl patch --type strategic` merges a patch into a pod template.

Three layers make every Ray pod: Kubeforge's defaults, the platform team's defaults (Helm values -> settings),
then the resource's `spec.ray.rayClusterSpec`. A plain recursive merge would let any list in a later layer
replace the earlier one whole (adding a toleration or an imagePullSecret meant restating every container);
here lists Kubernetes declares mergeable are merged item by item on their merge key, as in a strategic merge
patch: containers, env, ports, volumeMounts and volumes by name/key, `workerGroupSpecs` by `groupName`.
Lists without a merge key (tolerations, args, envFrom, capabilities.drop) are replaced, as Kubernetes does.

Directives, as in strategic merge patches: a key set to null removes it (e.g. `nodeSelector: {gpu: null}`);
`{"$patch": "delete", "name": "x"}` in a merged list removes item x; `{"$patch": "replace"}` in a list or a
map makes the rest of it replace the earlier value instead of merging.

The strategy tables are Kubernetes' own (`x-kubernetes-patch-strategy` / `x-kubernetes-patch-merge-key` of
io.k8s.api.core.v1.PodTemplateSpec; tests/unit/test_merge.py checks them against the published OpenAPI).
"""

from __future__ import annotations

import copy
from typing import Any

Strategy = dict[str, dict]
DIRECTIVE = "$patch"


def _merged_by(key: str, strategy: str = "merge", fields: Strategy | None = None) -> dict:
    node: dict[str, Any] = {"strategy": strategy, "key": key}
    if fields:
        node["fields"] = fields
    return node


_OBJECT_META: Strategy = {
    "finalizers": {"strategy": "merge"},
    "ownerReferences": _merged_by("uid"),
}
_CONTAINER: Strategy = {
    "env": _merged_by("name"),
    "ports": _merged_by("containerPort"),
    "volumeDevices": _merged_by("devicePath"),
    "volumeMounts": _merged_by("mountPath"),
}
POD_SPEC: Strategy = {
    "containers": _merged_by("name", fields=_CONTAINER),
    "ephemeralContainers": _merged_by("name", fields=_CONTAINER),
    "hostAliases": _merged_by("ip"),
    "imagePullSecrets": _merged_by("name"),
    "initContainers": _merged_by("name", fields=_CONTAINER),
    "resourceClaims": _merged_by("name", "merge,retainKeys"),
    "schedulingGates": _merged_by("name"),
    "topologySpreadConstraints": _merged_by("topologyKey"),
    "volumes": _merged_by("name", "merge,retainKeys", fields={"ephemeral": {"fields": {"volumeClaimTemplate": {
        "fields": {"metadata": {"fields": _OBJECT_META}}}}}}),
}
POD_TEMPLATE_SPEC: Strategy = {"metadata": {"fields": _OBJECT_META}, "spec": {"fields": POD_SPEC}}
# KubeRay's RayCluster spec (RayJob spec.rayClusterSpec, RayService spec.rayClusterConfig). KubeRay's CRD
# declares no merge key for workerGroupSpecs; groupName is what identifies a group to KubeRay.
RAY_CLUSTER_SPEC: Strategy = {
    "headGroupSpec": {"fields": {"template": {"fields": POD_TEMPLATE_SPEC}}},
    "workerGroupSpecs": _merged_by("groupName", fields={"template": {"fields": POD_TEMPLATE_SPEC}}),
}


def strategic_merge(base: Any, patch: Any, strategy: Strategy | None = None, path: str = "") -> Any:
    """`patch` merged into `base` (neither is modified); `strategy` describes the fields of this level and
    `path` names it in errors (a list item without its merge key is refused)."""
    if not isinstance(patch, dict) or not isinstance(base, dict):
        return _clean(patch, strategy)
    if patch.get(DIRECTIVE) == "replace":
        return _clean({k: v for k, v in patch.items() if k != DIRECTIVE}, strategy)
    strategy = strategy or {}
    merged = copy.deepcopy(base)
    for key, value in patch.items():
        if key == DIRECTIVE:
            continue
        if value is None:
            merged.pop(key, None)
            continue
        node = strategy.get(key, {})
        fields = node.get("fields")
        if key in merged and isinstance(value, list) and isinstance(merged[key], list) \
                and "merge" in node.get("strategy", "").split(","):
            merged[key] = _merge_list(merged[key], value, node.get("key"), fields, f"{path}.{key}")
        else:
            merged[key] = strategic_merge(merged.get(key), value, fields, f"{path}.{key}")
    return merged


def _merge_list(base: list, patch: list, key: str | None, fields: Strategy | None, path: str) -> list:
    if {DIRECTIVE: "replace"} in patch:
        return _clean([item for item in patch if item != {DIRECTIVE: "replace"}], fields)
    if key is None:  # a set of scalars (finalizers): union, in order
        return copy.deepcopy(base) + [copy.deepcopy(item) for item in patch if item not in base]
    merged = copy.deepcopy(base)
    for index, item in enumerate(patch):
        if not isinstance(item, dict) or key not in item:
            raise ValueError(f"{path.lstrip('.')}[{index}] has no {key!r}: items of {path.rsplit('.', 1)[-1]} are "
                             f"merged with the defaults by {key!r}, so give each one its {key!r}")
        at = next((i for i, existing in enumerate(merged) if isinstance(existing, dict)
                   and existing.get(key) == item[key]), None)
        if item.get(DIRECTIVE) == "delete":
            if at is not None:
                del merged[at]
        elif at is None:
            merged.append(_clean(item, fields))
        else:
            merged[at] = strategic_merge(merged[at], item, fields, f"{path}[{index}]")
    return merged


def _clean(value: Any, strategy: Strategy | None) -> Any:
    """A copy of a value that replaces (or newly adds) a field, without directives or null members."""
    if isinstance(value, dict):
        return strategic_merge({}, value, strategy)
    if isinstance(value, list):
        return [_clean(item, strategy) for item in value
                if not (isinstance(item, dict) and item.get(DIRECTIVE) in ("delete", "replace"))]
    return copy.deepcopy(value)
