"""Resource types the emulator serves: built-ins plus whatever CRDs register."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional


@dataclass
class ResourceType:
    group: str  # "" for the core group
    version: str
    plural: str
    kind: str
    namespaced: bool
    singular: str = ""
    short_names: list[str] = field(default_factory=list)
    categories: list[str] = field(default_factory=list)
    has_status: bool = False
    schema: Optional[dict] = None
    """openAPIV3Schema of the served version (custom resources only)."""
    printer_columns: list[dict] = field(default_factory=list)
    crd_name: Optional[str] = None
    selectable_fields: list[str] = field(default_factory=list)
    """CRD spec.versions[].selectableFields jsonPaths (custom resources)."""
    has_generation: bool = False
    """metadata.generation is maintained (custom resources and CRDs; most core kinds have none)."""
    return_deleted: bool = True
    """DELETE answers the object (ReturnDeletedObject), else a Status once it is gone."""

    @property
    def key(self) -> tuple[str, str]:
        return (self.group, self.plural)

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def qualified(self) -> str:
        """Kind.group as the real server writes it in error messages (e.g. FineTune.kubeforge.dev)."""
        return f"{self.plural}.{self.group}" if self.group else self.plural

    @property
    def verbs(self) -> list[str]:
        return ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]


_CORE = [
    ("namespaces", "Namespace", False, ["ns"], True),
    ("configmaps", "ConfigMap", True, ["cm"], False),
    ("secrets", "Secret", True, [], False),
    ("events", "Event", True, ["ev"], False),
    ("serviceaccounts", "ServiceAccount", True, ["sa"], False),
    ("services", "Service", True, ["svc"], True),
    ("pods", "Pod", True, ["po"], True),
]


def builtin_types() -> list[ResourceType]:
    types = [ResourceType("", "v1", plural, kind, namespaced, kind.lower(), shorts,
                          ["all"] if plural in ("pods", "services") else [], has_status)
             for plural, kind, namespaced, shorts, has_status in _CORE]
    types += [
        ResourceType("events.k8s.io", "v1", "events", "Event", True, "event", ["ev"]),
        ResourceType("coordination.k8s.io", "v1", "leases", "Lease", True, "lease"),
        ResourceType("apiextensions.k8s.io", "v1", "customresourcedefinitions", "CustomResourceDefinition", False,
                     "customresourcedefinition", ["crd", "crds"], has_status=True, has_generation=True),
    ]
    for rtype in types:
        if rtype.plural in ("configmaps", "secrets", "events", "leases", "services"):
            rtype.return_deleted = False
    return types


def from_crd(crd: dict) -> ResourceType:
    spec = crd["spec"]
    names = spec["names"]
    served = [v for v in spec["versions"] if v.get("served", True)]
    version = next((v for v in served if v.get("storage")), served[0])
    return ResourceType(
        group=spec["group"], version=version["name"], plural=names["plural"], kind=names["kind"],
        namespaced=spec.get("scope", "Namespaced") == "Namespaced",
        singular=names.get("singular", names["kind"].lower()), short_names=names.get("shortNames", []),
        categories=names.get("categories", []), has_status="status" in (version.get("subresources") or {}),
        schema=(version.get("schema") or {}).get("openAPIV3Schema"),
        printer_columns=version.get("additionalPrinterColumns", []), crd_name=crd["metadata"]["name"],
        selectable_fields=[f["jsonPath"] for f in version.get("selectableFields") or []], has_generation=True,
    )
