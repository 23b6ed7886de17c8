"""Sampled request traces in MLflow (the ServingEndpoint's spec.tracing).

One trace per sampled completion request, in the endpoint's MLflow experiment: the served model name, the messages
or prompt as the client sent them, the template's name, the sampling parameters, the answers, token counts, latency
and, for RAG, the ids of the retrieved chunks. Never the request headers: the API key travels there. MLflow exports traces in a background thread, so a sampled request is not slower for it; tracing
that fails (MLflow unreachable) is logged once and never fails a request.
"""

from __future__ import annotations

import logging
import random
from typing import Any, Optional

from kubeforge.api.serveapp import ServedTracing

log = logging.getLogger(__name__)


class RequestTracer:
    def __init__(self, config: ServedTracing, endpoint: str, chooser: Optional[random.Random] = None):
        self.config, self.endpoint = config, endpoint
        self.chooser = chooser or random.Random()
        self.experiment_id: Optional[str] = None
        self.broken = False

    def _experiment(self) -> Optional[str]:
        if self.experiment_id is None and not self.broken:
            import mlflow

            try:
                found = mlflow.get_experiment_by_name(self.config.experiment)
                self.experiment_id = (found.experiment_id if found is not None
                                      else mlflow.create_experiment(self.config.experiment))
            except Exception as error:  # noqa: BLE001 - tracing must never fail a request
                self._broke(error)
        return self.experiment_id

    def _broke(self, error: Exception) -> None:
        if not self.broken:
            log.warning("%s: request traces are off: MLflow experiment %r could not be used (%s)", self.endpoint,
                        self.config.experiment, error)
        self.broken = True

    def start(self, model: str, inputs: dict[str, Any], attributes: dict[str, Any]):
        """A span for this request when it is sampled (else None)."""
        if self.broken or self.chooser.random() >= self.config.sample_rate:
            return None
        experiment_id = self._experiment()
        if experiment_id is None:
            return None
        import mlflow

        try:
            return mlflow.start_span_no_context(name=model, span_type="LLM", inputs=inputs, experiment_id=experiment_id,
                                                attributes={"endpoint": self.endpoint, "model": model, **attributes})
        except Exception as error:  # noqa: BLE001
            self._broke(error)
            return None

    def finish(self, span, outputs: dict[str, Any], attributes: dict[str, Any], error: Optional[str] = None) -> None:
        if span is None:
            return
        try:
            span.set_outputs(outputs)
            span.set_attributes({**attributes, **({"error": error} if error else {})})
            span.end(status="ERROR" if error else "OK")
        except Exception as failure:  # noqa: BLE001
            self._broke(failure)


def open_tracer(config) -> Optional[RequestTracer]:
    """The tracer a ServeAppConfig asks for (None: tracing off). MLflow's location comes from the replica's
    MLFLOW_TRACKING_URI, as for every workload."""
    if config.tracing is None or config.tracing.sample_rate <= 0:
        return None
    return RequestTracer(config.tracing, config.endpoint)
