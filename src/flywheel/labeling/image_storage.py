"""How Label Studio reaches the images of the tasks: local files on a laptop, S3 on a cluster.

Curation names each image where the prediction log keeps it
(`flywheel.curation.queue.image_url`): a path under the state folder
locally, an `s3://bucket/key` URL when the state is in object storage (a
cluster). Label Studio serves an image only through a storage connected to
the project:

* **local files** (`add_local_storage`): a server `flywheel label server`
  started, with `LOCAL_FILES_DOCUMENT_ROOT`; the task names
  `/data/local-files/?d=<path under the root>`.
* **S3** (`add_s3_storage`): one import storage per bucket, with the keys of
  the environment the labeller runs in (`AWS_ACCESS_KEY_ID`/`_SECRET_ACCESS_KEY`,
  on a cluster the Secret `flywheel-s3`) and blob URLs. The task keeps its
  `s3://` URL; when a person opens it, Label Studio answers the image's
  `/tasks/<id>/resolve/?fileuri=<base64 of the URL>` with a redirect to a URL
  it pre-signs (`label.studio.presign`, the default), or streams the bytes itself
  (`presign: false`: for an S3 endpoint the annotators' browsers cannot reach).
  The storage is never synced: it resolves URLs, it does not import objects.

The S3 endpoint is the server's own `S3_ENDPOINT` setting (the Deployment sets
it from `flywheel-config`'s `AWS_ENDPOINT_URL`; `flywheel label server` from
the same variable): Label Studio trusts the operator's endpoint, while one
given with the storage must pass its SSRF check, which refuses private and
loopback addresses such as an in-cluster MinIO's.
"""

from __future__ import annotations

import os
import posixpath
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote, urlsplit

from flywheel.labeling.server import LabelStudioError

if TYPE_CHECKING:
    from label_studio_sdk import LabelStudio

LOCAL_FILES_PREFIX = "/data/local-files/?d="
S3_SCHEME = "s3"
PRESIGN_TTL_MINUTES = 15
"""How long a pre-signed image URL stays valid (Label Studio's default is one minute)."""

S3_ENDPOINT_HINT = (
    "Label Studio reaches S3 at its own S3_ENDPOINT setting: the Deployment sets it from "
    "flywheel-config's AWS_ENDPOINT_URL, `flywheel label server` from AWS_ENDPOINT_URL"
)


def is_s3(url: str) -> bool:
    """Whether a task's image is an object in S3.

    >>> is_s3("s3://b/k.png"), is_s3("/data/local-files/?d=a.png")
    (True, False)
    """
    return urlsplit(url).scheme == S3_SCHEME


def local_image_url(image_path: str, document_root: Path) -> tuple[str, Path]:
    """The local-files URL of an image, and the storage folder that lets the server serve it.

    >>> local_image_url("/state/predictions/d=1/images/a b.png", Path("/state"))
    ('/data/local-files/?d=predictions/d%3D1/images/a%20b.png', PosixPath('/state/predictions'))

    Raises:
        LabelStudioError: the image is not inside a folder under the document root.
    """
    path = Path(os.path.abspath(image_path))
    try:
        relative = path.relative_to(document_root)
    except ValueError:
        raise LabelStudioError(
            f"image {image_path} is outside the server's LOCAL_FILES_DOCUMENT_ROOT "
            f"{document_root}: set label.studio.document_root to a folder holding the "
            "prediction log and restart `flywheel label server`"
        ) from None
    if len(relative.parts) < 2:
        raise LabelStudioError(
            f"image {image_path} lies directly in LOCAL_FILES_DOCUMENT_ROOT {document_root}; "
            "Label Studio serves only files in its sub-folders"
        )
    url = LOCAL_FILES_PREFIX + quote(relative.as_posix(), safe="/")
    return url, document_root / relative.parts[0]


def add_local_storage(client: LabelStudio, project: int, folders: set[Path]) -> None:
    """Give the project a local-files storage per folder (Label Studio serves only those)."""
    listed = client.import_storage.local.list(project=project)
    have = {Path(storage.path) for storage in listed if storage.path is not None}
    for folder in sorted(folders - have):
        client.import_storage.local.create(
            project=project, path=str(folder), title=f"flywheel {folder.name}", use_blob_urls=True
        )


def s3_folders(urls: Iterable[str]) -> dict[str, str]:
    """Each bucket of the images and the deepest folder holding all of its images.

    >>> s3_folders(["s3://b/state/p/d=1/a.png", "s3://b/state/p/d=2/c.png", "s3://c/x/y.png"])
    {'b': 'state/p', 'c': 'x'}
    """
    keys: dict[str, list[str]] = {}
    for url in urls:
        parts = urlsplit(url)
        keys.setdefault(parts.netloc, []).append(parts.path.lstrip("/"))
    folders = {}
    for bucket, found in keys.items():
        common = posixpath.commonpath([posixpath.dirname(k) for k in found]) if found else ""
        folders[bucket] = common
    return folders


@dataclass(frozen=True)
class S3Keys:
    """The credentials a project's S3 storage reads the bucket with."""

    access_key: str
    secret_key: str
    session_token: str | None = None
    region: str | None = None


def s3_keys(env: Mapping[str, str] | None = None) -> S3Keys:
    """The S3 keys of the environment (`AWS_*`, what boto3 and the state store read).

    Raises:
        LabelStudioError: no keys (the message names the variables and the Secret).
    """
    env = os.environ if env is None else env
    access, secret = env.get("AWS_ACCESS_KEY_ID"), env.get("AWS_SECRET_ACCESS_KEY")
    if not access or not secret:
        raise LabelStudioError(
            "the tasks name their images in S3 (s3://...), so the Label Studio project needs "
            "an S3 storage, and it needs keys: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
            "(on the cluster: the Secret flywheel-s3, as every step gets it)"
        )
    return S3Keys(
        access_key=access,
        secret_key=secret,
        session_token=env.get("AWS_SESSION_TOKEN") or None,
        region=env.get("AWS_DEFAULT_REGION") or env.get("AWS_REGION") or None,
    )


def add_s3_storage(
    client: LabelStudio, project: int, folders: Mapping[str, str], keys: S3Keys, *, presign: bool
) -> None:
    """Give the project an S3 import storage per bucket it has none of (Label Studio
    resolves an `s3://` URL through any storage of its bucket)."""
    from label_studio_sdk.core.api_error import ApiError

    have = {storage.bucket for storage in client.import_storage.s3.list(project=project)}
    for bucket, prefix in sorted(folders.items()):
        if bucket in have:
            continue
        try:
            _create_s3_storage(client, project, bucket, prefix, keys, presign=presign)
        except ApiError as err:  # Label Studio tries the bucket before it saves the storage
            raise LabelStudioError(
                f"Label Studio refused an S3 storage of s3://{bucket}/{prefix} for project "
                f"{project}: {err.status_code} {str(err.body)[:300]}; {S3_ENDPOINT_HINT}, "
                "and the keys are the environment's AWS_ACCESS_KEY_ID/_SECRET_ACCESS_KEY"
            ) from err


def _create_s3_storage(
    client: LabelStudio, project: int, bucket: str, prefix: str, keys: S3Keys, *, presign: bool
) -> None:
    client.import_storage.s3.create(
        project=project,
        title=f"flywheel {bucket}",
        bucket=bucket,
        prefix=prefix or None,
        use_blob_urls=True,
        presign=presign,
        presign_ttl=PRESIGN_TTL_MINUTES,
        aws_access_key_id=keys.access_key,
        aws_secret_access_key=keys.secret_key,
        aws_session_token=keys.session_token,
        region_name=keys.region,
    )
