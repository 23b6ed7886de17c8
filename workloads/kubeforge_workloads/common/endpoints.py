"""OpenAI-compatible chat endpoints as a workload calls them: the service-alias stand-in for cluster DNS, the bearer
key from a Secret mounted as an env var, and one chat-completions request with its latency and token usage.

In the sandbox, in-cluster service names (<name>-serve-svc.<ns>.svc:8000) do not resolve; the local KubeRay sets
KUBEFORGE_SERVICE_ALIASES = {"<host>:<port>": "<host>:<port>"} and every URL whose host:port is a key is sent to the
value instead. On a real cluster the variable is unset and URLs are used as given.
"""

from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import dataclass
from typing import Optional
from urllib.parse import urlsplit, urlunsplit

from kubeforge_workloads.common.errors import UserError, WorkloadError

SERVICE_ALIASES_ENV = "KUBEFORGE_SERVICE_ALIASES"
TRANSPORT_ATTEMPTS = 4
"""Tries per request when the connection fails or the server answers 5xx/429 (then the attempt fails, to retry)."""
REQUEST_TIMEOUT_SECONDS = 300.0


def resolve_alias(url: str, environ: Optional[dict] = None) -> str:
    """`url` with its host:port replaced when KUBEFORGE_SERVICE_ALIASES maps it; otherwise `url` unchanged."""
    raw = (os.environ if environ is None else environ).get(SERVICE_ALIASES_ENV)
    if not raw:
        return url
    aliases = json.loads(raw)
    parts = urlsplit(url)
    target = aliases.get(parts.netloc)
    return urlunsplit(parts._replace(netloc=target)) if target else url


def api_key_from_env(env_name: Optional[str], environ: Optional[dict] = None) -> Optional[str]:
    """The first non-empty line of env var `env_name` (a ServingEndpoint's auth Secret holds one key per line)."""
    if not env_name:
        return None
    value = (os.environ if environ is None else environ).get(env_name, "")
    return next((line.strip() for line in value.splitlines() if line.strip()), None)


@dataclass(frozen=True)
class ChatReply:
    text: str
    seconds: float
    prompt_tokens: int
    completion_tokens: int


class RequestRejected(Exception):
    """The endpoint answered 4xx (other than 401, 403, 404 and 429): this request cannot succeed as sent."""


class ChatEndpoint:
    """POST {url}/chat/completions for one model; safe to call from several threads."""

    def __init__(self, name: str, url: str, model: str, api_key: Optional[str] = None):
        self.name, self.model = name, model
        self.url = resolve_alias(url.rstrip("/")) + "/chat/completions"
        self.headers = {"Content-Type": "application/json"}
        if api_key:
            self.headers["Authorization"] = f"Bearer {api_key}"
        self._local = threading.local()

    @classmethod
    def from_input(cls, role: str, value: dict) -> "ChatEndpoint":
        """From the operator's inputs.endpoint / inputs.judge: {name, url, model, apiKeyEnv?}."""
        return cls(value.get("name") or role, value["url"], value["model"], api_key_from_env(value.get("apiKeyEnv")))

    def _session(self):
        import requests

        if not hasattr(self._local, "session"):
            self._local.session = requests.Session()
        return self._local.session

    def chat(self, messages: list[dict], temperature: float, max_tokens: Optional[int] = None,
             json_reply: bool = False) -> ChatReply:
        import requests

        body: dict = {"model": self.model, "messages": messages, "temperature": temperature}
        if max_tokens is not None:
            body["max_tokens"] = max_tokens
        if json_reply:
            body["response_format"] = {"type": "json_object"}
        problem = ""
        for attempt in range(TRANSPORT_ATTEMPTS):
            if attempt:
                time.sleep(min(2.0 ** attempt * 0.25, 4.0))
            started = time.monotonic()
            try:
                response = self._session().post(self.url, json=body, headers=self.headers,
                                                timeout=REQUEST_TIMEOUT_SECONDS)
            except requests.RequestException as error:
                problem = f"{type(error).__name__}: {error}"
                continue
            seconds = time.monotonic() - started
            if response.status_code == 429 or response.status_code >= 500:
                problem = f"HTTP {response.status_code}: {response.text[:200]}"
                continue
            if response.status_code in (401, 403, 404):
                # Every request would fail alike: a wrong key, URL or model, not a bad row.
                raise UserError(f"{self.name} at {self.url} answered HTTP {response.status_code} for model "
                                f"{self.model!r}: {response.text[:200]}; check its URL, model and API key Secret")
            if response.status_code >= 400:
                raise RequestRejected(f"{self.name} answered HTTP {response.status_code}: {response.text[:300]}")
            try:
                payload = response.json()
                text = payload["choices"][0]["message"]["content"] or ""
            except (ValueError, KeyError, IndexError, TypeError):
                raise RequestRejected(f"{self.name} answered without choices[0].message.content: "
                                      f"{response.text[:300]}") from None
            usage = payload.get("usage") or {}
            return ChatReply(text, seconds, int(usage.get("prompt_tokens") or 0),
                             int(usage.get("completion_tokens") or 0))
        # Unreachable or overloaded: an infrastructure failure, so the attempt is retried and resumes.
        raise WorkloadError(f"{self.name} at {self.url} failed {TRANSPORT_ATTEMPTS} times: {problem}")
