"""S3 for tests, over the real protocol (moto): a server on loopback that subprocesses and Ray workers reach through
the AWS_* environment, or moto's in-process mock for a client in the test's own process."""

from __future__ import annotations

import logging
import os
import socket
import urllib.request
from contextlib import contextmanager
from typing import Iterator


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def moto_s3_server(*buckets: str) -> Iterator[dict[str, str]]:
    """moto's S3 server on a free loopback port, this process's AWS_* environment pointing at it until the block ends
    (then restored), `buckets` created; yields that environment for subprocesses. moto keeps its buckets in this
    process's memory, shared by every server it starts: the block ends by emptying them, so that no module finds
    another's objects."""
    import boto3
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per S3 request otherwise
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    try:
        for bucket in buckets:
            boto3.client("s3").create_bucket(Bucket=bucket)
        yield env
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        try:
            with urllib.request.urlopen(urllib.request.Request(f"http://127.0.0.1:{port}/moto-api/reset",
                                                               method="POST"), timeout=30):
                pass
        except OSError as error:  # never hide the block's own failure behind this one
            logging.getLogger(__name__).warning("could not empty moto's buckets: %s", error)
        server.stop()


@contextmanager
def in_process_s3_store(bucket: str, monkeypatch) -> Iterator:
    """An S3ObjectStore on moto's in-process mock (no server), `bucket` created."""
    import boto3
    from moto import mock_aws

    from kubeforge.storage.objectstore import S3ObjectStore

    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    with mock_aws():
        client = boto3.client("s3")
        client.create_bucket(Bucket=bucket)
        yield S3ObjectStore(client)
