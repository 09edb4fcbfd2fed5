"""A DVC remote in a real S3-compatible store: moto in server mode on 127.0.0.1.

`s3_server` starts moto's threaded server on a free port and stops it; the
environment a pod would get (`FLYWHEEL_DVC_REMOTE`, `AWS_ENDPOINT_URL`, dummy
credentials) comes from `s3_remote_env`. `publish_dataset` records a dataset
folder as a version in a throw-away DVC project (no git) and pushes it there:
what a laptop (or the flywheel pipeline's update step) does before a cluster
run asks for the version by hash.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import boto3

from flywheel.config import DataPlan
from flywheel.data.remote import DataRemote, init_workspace
from flywheel.data.versioning import track_dataset

CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}
"""moto accepts any credentials; boto3 needs some."""


@dataclass(frozen=True)
class S3Server:
    """A running S3-compatible endpoint and a bucket in it."""

    endpoint: str
    bucket: str

    def remote(self, prefix: str = "dvc") -> DataRemote:
        """A DVC remote under `s3://<bucket>/<prefix>` at this endpoint."""
        return DataRemote(f"s3://{self.bucket}/{prefix}", self.endpoint)

    def env(self, prefix: str = "dvc") -> dict[str, str]:
        """The environment a pod gets: the remote, the endpoint, credentials."""
        return {
            **CREDENTIALS,
            "FLYWHEEL_DVC_REMOTE": self.remote(prefix).url,
            "AWS_ENDPOINT_URL": self.endpoint,
        }

    def read(self, key: str) -> str:
        """The text of the object `key` in the bucket."""
        client = boto3.client("s3", endpoint_url=self.endpoint, **_client_credentials())
        body: bytes = client.get_object(Bucket=self.bucket, Key=key)["Body"].read()
        return body.decode()

    def delete(self, keys: list[str]) -> None:
        """Delete these objects from the bucket (what a lifecycle rule or a person might do)."""
        client = boto3.client("s3", endpoint_url=self.endpoint, **_client_credentials())
        for key in keys:
            client.delete_object(Bucket=self.bucket, Key=key)

    def keys(self, prefix: str = "") -> list[str]:
        """Every object key under `prefix` in the bucket."""
        client = boto3.client("s3", endpoint_url=self.endpoint, **_client_credentials())
        pages = client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
        return [obj["Key"] for page in pages for obj in page.get("Contents", [])]


@contextmanager
def s3_server(bucket: str = "flywheel-dvc") -> Iterator[S3Server]:
    """moto's S3 server on 127.0.0.1 (a free port) with `bucket` created; stopped on exit.

    moto keeps its objects in memory per process, across servers: tests that
    must not see each other's objects use a prefix of their own.
    """
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        boto3.client("s3", endpoint_url=endpoint, **_client_credentials()).create_bucket(
            Bucket=bucket
        )
        yield S3Server(endpoint, bucket)
    finally:
        server.stop()


def publish_dataset(source: Path, plan: DataPlan, remote: DataRemote, workdir: Path) -> str:
    """Record the data folder `source` as a version and push it to `remote`; return the version.

    The push also records it as the latest (`<remote>/flywheel/latest.json`).
    """
    init_workspace(workdir, remote)
    shutil.copytree(source, workdir / plan.root)
    return track_dataset(workdir, plan, push=True)


def _client_credentials() -> dict[str, str]:
    return {
        "aws_access_key_id": CREDENTIALS["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        "region_name": CREDENTIALS["AWS_DEFAULT_REGION"],
    }
