"""Which kinds have a controller in this version."""

from __future__ import annotations

from kubeforge.controllers.batch import BatchKind
from kubeforge.controllers.finetune import FineTuneKind

BATCH_KINDS: dict[str, BatchKind] = {kind.info.kind: kind for kind in (FineTuneKind(),)}
