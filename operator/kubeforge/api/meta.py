"""Group/version constants and the base model every spec type derives from."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel

GROUP = "kubeforge.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
CATEGORY = "genai"
FINALIZER = f"{GROUP}/finalizer"
"""Held by every Kubeforge resource while the operator may still have children or data to clean up."""


class ApiModel(BaseModel):
    """Base for every API type: camelCase on the wire, docstrings become descriptions."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        use_attribute_docstrings=True,
        extra="forbid",
    )

    def wire(self) -> dict:
        """The object as the Kubernetes API stores it (camelCase, unset optionals omitted)."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


DEFAULT_EMPTY_OBJECT = {"default": {}}
"""Schema extra for nested objects: the API server defaults them to {} so their fields' defaults apply."""
