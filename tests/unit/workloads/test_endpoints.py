"""Endpoint URLs and keys as the EvalRun workload reads them: the sandbox's service aliases and the first key of a
ServingEndpoint's auth Secret."""

from __future__ import annotations

import json

from kubeforge_workloads.common.endpoints import SERVICE_ALIASES_ENV, ChatEndpoint, api_key_from_env, resolve_alias

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
