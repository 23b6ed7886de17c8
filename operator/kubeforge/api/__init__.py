"""The Kubeforge API: pydantic models that are the single source of truth for the CRDs.

`kubeforge.api` depends on nothing else of ours, so operator and workloads can both import it.
"""

from kubeforge.api.meta import GROUP, VERSION, API_VERSION
from kubeforge.api.kinds import KINDS, KindInfo, kind_info

__all__ = ["GROUP", "VERSION", "API_VERSION", "KINDS", "KindInfo", "kind_info"]
