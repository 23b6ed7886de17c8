"""The Serve application as the RayService runs it: `build(args)` deployed with Ray Serve on a local Ray (one
CPU), weights from S3, API keys from the environment variable, called with the official `openai` client.

Starts Ray: run it under the sandbox lock (flock /tmp/kubeforge-sandbox.lock ...)."""

from __future__ import annotations

import pytest

from tests.unit.workloads.test_serve_app import (
    API_KEY, ENDPOINT, app_args, build_models, chat, client, free_port, moto_s3, streamed_text,
)

openai = pytest.importorskip("openai")


def test_build_deploys_on_ray_serve_and_speaks_openai(tmp_path, monkeypatch):
    import ray
    from ray import serve

    from kubeforge.api.serveapp import API_KEYS_ENV
    from kubeforge_workloads.serve.app import build

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    # A local Ray of its own, whatever auth an earlier sandbox in this test session left in the environment
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    for key in ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        monkeypatch.delenv(key, raising=False)
    # Replicas read the keys from this variable, as the kubelet sets it from the Secret in a RayService pod.
    monkeypatch.setenv(API_KEYS_ENV, f"{API_KEY}\nsecond-key\n")
    with moto_s3():
        uris = build_models(tmp_path)
        args = app_args(uris, api_keys_env=API_KEYS_ENV, templates=[])
        ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
        try:
            port = free_port()
            serve.start(http_options={"host": "127.0.0.1", "port": port})
            # mounted under a route prefix, as the operator renders it (/<namespace>/<name>)
            serve.run(build(args), name=ENDPOINT, route_prefix="/team/demo", blocking=False)
            url = f"http://127.0.0.1:{port}/team/demo/v1"
            with pytest.raises(openai.AuthenticationError):
                client(url, "wrong").models.list()
            api = client(url, "second-key")
            assert [m.id for m in api.models.list()] == [ENDPOINT, "concise", "verbose"]
            base, adapter = chat(api, ENDPOINT), chat(api, "concise")
            assert base.choices[0].message.content != adapter.choices[0].message.content
            assert chat(api, ENDPOINT).choices[0].message.content == base.choices[0].message.content
            streamed, _ = streamed_text(chat(api, "concise", stream=True))
            assert streamed == adapter.choices[0].message.content
            with pytest.raises(openai.NotFoundError):
                chat(api, "missing")
        finally:
            serve.shutdown()
            ray.shutdown()
