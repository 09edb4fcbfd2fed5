"""An S3-compatible object store on 127.0.0.1 for the tests: moto in server mode.

`object_store` (session-scoped) starts `moto.server.ThreadedMotoServer` on a
free port, creates a bucket and yields an `ObjectStore`: its endpoint, the
bucket, and `env`, the environment a pod gets from the manifests' ConfigMap
and the S3 Secret (`AWS_ENDPOINT_URL`, keys, region), which s3fs, boto3,
DVC's S3 driver and MLflow all read. Tests that need a clean prefix take
`store.prefix(name)`; `store.apply(monkeypatch)` puts the env into this process.

Reuse it from any suite: `from tests.support.object_store import object_store`
in a conftest or test module (pytest finds the fixture by that name).

One store per session on purpose: fsspec caches an s3fs instance per process by
its arguments, not by the environment, so a second endpoint in the same test
process would not be seen (a subprocess sees whatever its environment says).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from flywheel.monitoring.dashboards import free_port

ACCESS_KEY = "flywheel-test-key"
SECRET_KEY = "flywheel-test-secret"  # moto accepts any keys; these are not credentials
REGION = "us-east-1"
BUCKET = "flywheel-state"


@dataclass
class ObjectStore:
    """A running S3-compatible server and one bucket in it."""

    endpoint: str
    bucket: str
    env: dict[str, str] = field(default_factory=dict)

    def prefix(self, name: str | None = None) -> str:
        """A fresh `s3://bucket/<name>-<random>` URL no other test uses."""
        return f"s3://{self.bucket}/{name or 'test'}-{uuid.uuid4().hex[:8]}"

    def apply(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Put the store's environment into this process (undone after the test)."""
        for key, value in self.env.items():
            monkeypatch.setenv(key, value)

    def keys(self, url: str) -> list[str]:
        """Every object key under a URL of this bucket, sorted (read with boto3, not fsspec)."""
        import boto3

        prefix = url.removeprefix(f"s3://{self.bucket}/").rstrip("/") + "/"
        client = boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
            region_name=REGION,
        )
        paginator = client.get_paginator("list_objects_v2")
        return sorted(
            item["Key"]
            for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix)
            for item in page.get("Contents", [])
        )


def store_env(endpoint: str) -> dict[str, str]:
    """What a pod's environment holds to reach the store (ConfigMap + the S3 Secret)."""
    return {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
        "AWS_DEFAULT_REGION": REGION,
    }


@pytest.fixture(scope="session")
def object_store() -> Iterator[ObjectStore]:
    """moto's S3 server on 127.0.0.1 with one bucket; stopped at the end of the session."""
    import boto3
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    try:
        boto3.client(
            "s3",
            endpoint_url=endpoint,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
            region_name=REGION,
        ).create_bucket(Bucket=BUCKET)
        yield ObjectStore(endpoint, BUCKET, store_env(endpoint))
    finally:
        server.stop()
