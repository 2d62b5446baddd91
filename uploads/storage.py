"""The S3 backend that ``MEDIA_STORAGE=s3`` uses (``config/settings/storage.py``).

django-storages' ``S3Storage`` opens a file for reading by downloading the whole object
into a ``SpooledTemporaryFile`` first, in memory with its default
``AWS_S3_MAX_MEMORY_SIZE`` of 0: a 2 GB download would take 2 GB of a web process, and
the first byte would wait for the last. Here a file opened for reading is the object's
HTTP body, read as it is consumed, so a download (``FileResponse``) streams in blocks
and a bounded read (``indexing.extraction.read_stored_file``) fetches only what it reads.
"""

from __future__ import annotations

from typing import Any

from botocore.exceptions import ClientError
from django.core.files import File
from storages.backends.s3 import S3Storage
from storages.utils import clean_name


class StreamingS3Storage(S3Storage):
    """``S3Storage`` whose files opened for reading stream from the object's body."""

    def _open(self, name: str, mode: str = "rb") -> File:
        if any(flag in mode for flag in "wa+"):
            return super()._open(name, mode)
        key = self._normalize_name(clean_name(name))
        try:
            response = self.bucket.Object(key).get()
        except ClientError as err:
            if err.response["ResponseMetadata"]["HTTPStatusCode"] == 404:
                raise FileNotFoundError(f"File does not exist: {name}") from err
            raise
        return StreamedObject(response["Body"], name=name, size=response["ContentLength"])


class StreamedObject(File):
    """A read-only, forward-only file over an S3 object's body (botocore's
    ``StreamingBody``): ``read(n)`` fetches at most ``n`` more bytes, nothing is kept."""

    def __init__(self, body: Any, *, name: str, size: int) -> None:
        super().__init__(body, name=name)
        self.size = size

    def seekable(self) -> bool:
        """Never: what was read is gone (``FileResponse`` then takes no length from it)."""
        return False

    def open(self, mode: str | None = None) -> StreamedObject:
        """Already open; a stream cannot be rewound, so asking again is an error once read."""
        if self.closed:
            raise ValueError(f"{self.name}: a streamed object cannot be reopened; open it again")
        return self
