"""The environment a RayJob's / RayService's Ray processes get from the head group's first container: `env`
(literal values, `valueFrom.secretKeyRef` / `configMapKeyRef`) and `envFrom` (`secretRef` / `configMapRef`, with
`prefix`), resolved the way the kubelet does. Lookups are injected, so this module does no I/O itself."""

from __future__ import annotations

from typing import Callable, Mapping, Optional

Lookup = Callable[[str, str], Optional[Mapping[str, str]]]  # (namespace, name) -> data, None when missing


class EnvError(ValueError):
    """A reference the kubelet would refuse to start the container with (CreateContainerConfigError)."""


def head_container(spec: Mapping) -> Optional[Mapping]:
    """RayJob: spec.rayClusterSpec; RayService: spec.rayClusterConfig."""
    cluster = spec.get("rayClusterSpec") or spec.get("rayClusterConfig") or {}
    try:
        return cluster["headGroupSpec"]["template"]["spec"]["containers"][0]
    except (KeyError, IndexError, TypeError):
        return None


def container_env(container: Optional[Mapping], namespace: str, secret: Lookup, config_map: Lookup) -> dict[str, str]:
    """Env of the container; envFrom first, then env (which wins), as in Kubernetes."""
    if not container:
        return {}
    env: dict[str, str] = {}
    for source in container.get("envFrom") or []:
        if "secretRef" in source:
            ref, lookup, kind = source["secretRef"] or {}, secret, "Secret"
        elif "configMapRef" in source:
            ref, lookup, kind = source["configMapRef"] or {}, config_map, "ConfigMap"
        else:
            continue
        data = lookup(namespace, ref.get("name", ""))
        if data is None:
            if ref.get("optional"):
                continue
            raise EnvError(f'{kind.lower()} "{ref.get("name", "")}" not found (envFrom)')
        prefix = source.get("prefix") or ""
        env.update({f"{prefix}{k}": str(v) for k, v in data.items()})
    for item in container.get("env") or []:
        name = item.get("name")
        if not name:
            continue
        if "valueFrom" not in item:
            env[name] = str(item.get("value") or "")
            continue
        value_from = item["valueFrom"] or {}
        if "secretKeyRef" in value_from:
            ref, lookup, kind = value_from["secretKeyRef"] or {}, secret, "secret"
        elif "configMapKeyRef" in value_from:
            ref, lookup, kind = value_from["configMapKeyRef"] or {}, config_map, "configmap"
        else:
            continue  # fieldRef / resourceFieldRef: pod facts a local process does not have
        data = lookup(namespace, ref.get("name", ""))
        if data is not None and ref.get("key") in data:
            env[name] = str(data[ref["key"]])
        elif not ref.get("optional"):
            missing = (f'{kind} "{ref.get("name", "")}" not found' if data is None
                       else f'couldn\'t find key {ref.get("key")} in {kind.capitalize()} {namespace}/{ref.get("name")}')
            raise EnvError(f"env {name}: {missing}")
    return env
