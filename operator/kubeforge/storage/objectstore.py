"""A narrow object-store interface over S3 (boto3), so storage can be faked or swapped."""

from __future__ import annotations

from typing import Iterator, Optional, Protocol


class ObjectStore(Protocol):
    def get(self, bucket: str, key: str) -> Optional[bytes]: ...
    def put(self, bucket: str, key: str, body: bytes) -> None: ...
    def list(self, bucket: str, prefix: str) -> Iterator[str]: ...
    def delete_prefix(self, bucket: str, prefix: str) -> int: ...


class S3ObjectStore:
    """boto3-backed store; endpoint and credentials come from the standard AWS_* environment."""

    def __init__(self, client=None, endpoint_url: Optional[str] = None):
        if client is None:
            import boto3
            client = boto3.client("s3", endpoint_url=endpoint_url)
        self.client = client

    def get(self, bucket: str, key: str) -> Optional[bytes]:
        try:
            return self.client.get_object(Bucket=bucket, Key=key)["Body"].read()
        except self.client.exceptions.NoSuchKey:
            return None

    def put(self, bucket: str, key: str, body: bytes) -> None:
        self.client.put_object(Bucket=bucket, Key=key, Body=body)

    def list(self, bucket: str, prefix: str) -> Iterator[str]:
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
            for item in page.get("Contents", []):
                yield item["Key"]

    def delete_prefix(self, bucket: str, prefix: str) -> int:
        keys = list(self.list(bucket, prefix))
        for start in range(0, len(keys), 1000):
            batch = [{"Key": k} for k in keys[start:start + 1000]]
            self.client.delete_objects(Bucket=bucket, Delete={"Objects": batch, "Quiet": True})
        return len(keys)
