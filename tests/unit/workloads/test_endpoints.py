"""OpenAI-compatible endpoints as the EvalRun workload calls them: the sandbox's service aliases, the first key of a
ServingEndpoint's auth Secret, and how a reply, a rejected request, a wrong key and an outage differ (over real
HTTP)."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from kubeforge_workloads.common.endpoints import (
    SERVICE_ALIASES_ENV, ChatEndpoint, RequestRejected, api_key_from_env, resolve_alias,
)
from kubeforge_workloads.common.errors import UserError, WorkloadError

SERVICE_URL = "http://rs-serve-svc.ns.svc:8000/ns/chat/v1"


def test_a_url_whose_host_and_port_are_aliased_goes_to_the_alias():
    environ = {SERVICE_ALIASES_ENV: json.dumps({"rs-serve-svc.ns.svc:8000": "127.0.0.1:41234"})}
    assert resolve_alias(SERVICE_URL, environ) == "http://127.0.0.1:41234/ns/chat/v1"
    assert resolve_alias("http://other.ns.svc:8000/v1", environ) == "http://other.ns.svc:8000/v1"
    assert resolve_alias("http://rs-serve-svc.ns.svc:9000/v1", environ) == "http://rs-serve-svc.ns.svc:9000/v1"


def test_without_aliases_urls_are_used_as_given(monkeypatch):
    monkeypatch.delenv(SERVICE_ALIASES_ENV, raising=False)
    assert resolve_alias(SERVICE_URL, {}) == SERVICE_URL
    assert ChatEndpoint("e", SERVICE_URL + "/", "m").url == SERVICE_URL + "/chat/completions"


def test_the_bearer_key_is_the_first_non_empty_line_of_the_secret():
    assert api_key_from_env("KEY", {"KEY": "\n  first-key \nsecond-key\n"}) == "first-key"
    assert api_key_from_env("KEY", {"KEY": "\n\n"}) is None
    assert api_key_from_env(None, {}) is None
    endpoint = ChatEndpoint("e", SERVICE_URL, "m", api_key="first-key")
    assert endpoint.headers["Authorization"] == "Bearer first-key"
    assert "Authorization" not in ChatEndpoint("e", SERVICE_URL, "m").headers


@pytest.fixture
def scripted_server():
    """A real HTTP server answering chat completions with the statuses queued in `statuses` (then 200)."""
    statuses: list[int] = []
    bodies: list[dict] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            bodies.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            status = statuses.pop(0) if statuses else 200
            payload = {"choices": [{"message": {"content": "hello"}}], "usage": {"prompt_tokens": 3,
                                                                               "completion_tokens": 1}}
            body = json.dumps(payload if status == 200 else {"error": "no"}).encode()
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1", statuses, bodies
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_a_reply_carries_text_tokens_and_the_request_asks_for_json(scripted_server):
    url, statuses, bodies = scripted_server
    statuses.append(503)  # overloaded once: asked again
    reply = ChatEndpoint("e", url, "m").chat([{"role": "user", "content": "hi"}], temperature=0.1, max_tokens=8,
                                             json_reply=True)
    assert (reply.text, reply.prompt_tokens, reply.completion_tokens) == ("hello", 3, 1) and len(bodies) == 2
    assert bodies[-1] == {"model": "m", "messages": [{"role": "user", "content": "hi"}], "temperature": 0.1,
                          "max_tokens": 8, "response_format": {"type": "json_object"}}


def test_a_rejected_request_a_wrong_key_and_an_unreachable_endpoint_differ(scripted_server, monkeypatch):
    from kubeforge_workloads.common import endpoints

    url, statuses, _ = scripted_server
    endpoint = ChatEndpoint("judge", url, "m")
    statuses.append(400)
    with pytest.raises(RequestRejected, match="HTTP 400"):  # this row's request: an error row
        endpoint.chat([], temperature=0)
    statuses.append(401)
    with pytest.raises(UserError, match="judge at .* answered HTTP 401 .* API key"):  # every row alike: fail fast
        endpoint.chat([], temperature=0)
    monkeypatch.setattr(endpoints.time, "sleep", lambda seconds: None)
    statuses.extend([503] * endpoints.TRANSPORT_ATTEMPTS)
    with pytest.raises(WorkloadError, match="failed 4 times: HTTP 503") as raised:  # retried as an attempt
        endpoint.chat([], temperature=0)
    assert type(raised.value) is WorkloadError
