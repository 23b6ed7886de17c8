"""Which kinds have a controller in this version."""

from __future__ import annotations

from kubeforge.controllers.batch import BatchKind
from kubeforge.controllers.evalrun import EvalRunKind
from kubeforge.controllers.finetune import FineTuneKind
from kubeforge.controllers.trainingjob import TrainingJobKind
from kubeforge.controllers.vectorindex import VectorIndexKind

BATCH_KINDS: dict[str, BatchKind] = {kind.info.kind: kind for kind in (
    TrainingJobKind(), FineTuneKind(), VectorIndexKind(), EvalRunKind())}
