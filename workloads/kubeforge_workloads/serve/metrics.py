"""Prometheus metrics on Ray Serve's metrics port (requests, latency, generated tokens, time to first token),
tagged with the endpoint and the model name. Outside a Ray worker (unit tests, local runs) they are not kept."""

from __future__ import annotations

LATENCY_BOUNDARIES = [0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120]


class ServeMetrics:
    def __init__(self, endpoint: str):
        self.endpoint = endpoint
        self.enabled = _in_ray()
        if not self.enabled:
            return
        from ray.util.metrics import Counter, Histogram

        tags = ("endpoint", "model")
        self.requests = Counter("kubeforge_serve_requests", "Completion requests accepted", tag_keys=tags)
        self.tokens = Counter("kubeforge_serve_generated_tokens", "Tokens generated", tag_keys=tags)
        self.latency = Histogram("kubeforge_serve_request_seconds", "Request latency to the last token",
                                 boundaries=LATENCY_BOUNDARIES, tag_keys=tags)
        self.ttft = Histogram("kubeforge_serve_time_to_first_token_seconds", "Streaming time to first token",
                              boundaries=LATENCY_BOUNDARIES, tag_keys=tags)

    def _tags(self, model: str) -> dict:
        return {"endpoint": self.endpoint, "model": model}

    def request(self, model: str) -> None:
        if self.enabled:
            self.requests.inc(1, self._tags(model))

    def first_token(self, model: str, seconds: float) -> None:
        if self.enabled:
            self.ttft.observe(seconds, self._tags(model))

    def done(self, model: str, seconds: float, tokens: int) -> None:
        if self.enabled:
            self.latency.observe(seconds, self._tags(model))
            if tokens:
                self.tokens.inc(tokens, self._tags(model))


def _in_ray() -> bool:
    import sys

    ray = sys.modules.get("ray")
    return bool(ray is not None and ray.is_initialized())
