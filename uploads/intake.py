"""Reading uploaded files out of a request, with the size limit enforced as bytes arrive.

``LimitedUploadHandler`` is first in ``settings.FILE_UPLOAD_HANDLERS``. It counts each
file's bytes while the body streams in and stops the upload the moment a file would pass
``UPLOAD_MAX_BYTES``: the chunk that crosses the limit is never handed to the handlers
that keep data in memory or write the temporary file, and the rest of the body is not
read. It then sets ``request.upload_too_large = True``; views call ``files_from_request``,
which turns that into ``UploadRejected("too_large")``.

The request's other fields that came before the first file (the CSRF token of a form,
which Django renders first) are parsed as usual, so ``CsrfViewMiddleware`` reading
``request.POST`` still works after a stop.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.files.uploadedfile import UploadedFile
from django.core.files.uploadhandler import FileUploadHandler, StopUpload
from django.http import HttpRequest

from uploads.exceptions import UploadRejected

# Multipart framing (boundaries, part headers, a CSRF token field) on top of the files.
MULTIPART_OVERHEAD_BYTES = 1024 * 1024


def max_request_bytes() -> int:
    """The largest body worth reading: ``UPLOAD_MAX_REQUEST_BYTES`` plus multipart framing."""
    return settings.UPLOAD_MAX_REQUEST_BYTES + MULTIPART_OVERHEAD_BYTES


class LimitedUploadHandler(FileUploadHandler):
    """Stop reading an upload as soon as one file passes ``UPLOAD_MAX_BYTES``.

    Sets ``request.upload_too_large = True`` (``False`` otherwise, once parsing began)
    and raises ``StopUpload(connection_reset=True)``: Django closes the partial files
    and reads nothing more of the body. A body whose ``Content-Length`` is already above
    ``UPLOAD_MAX_REQUEST_BYTES`` (plus framing) is refused at its first file, before any
    of that file's bytes are read.
    """

    def __init__(self, request: HttpRequest | None = None) -> None:
        super().__init__(request)
        self.limit = settings.UPLOAD_MAX_BYTES
        self.received = 0
        self.refuse_files = False
        if request is not None:
            request.upload_too_large = False

    def handle_raw_input(
        self,
        input_data: Any,
        META: dict[str, Any],
        content_length: int,
        boundary: bytes,
        encoding: str | None = None,
    ) -> None:
        # Not a refusal here: raising from handle_raw_input escapes Django's parser, and
        # the fields before the first file (the CSRF token) are still wanted.
        self.refuse_files = content_length > max_request_bytes()

    def new_file(self, *args: Any, **kwargs: Any) -> None:
        super().new_file(*args, **kwargs)
        self.received = 0
        if self.refuse_files:
            self._stop()

    def receive_data_chunk(self, raw_data: bytes, start: int) -> bytes:
        self.received += len(raw_data)
        if self.received > self.limit:
            self._stop()
        return raw_data

    def file_complete(self, file_size: int) -> None:
        # The handlers after this one build the UploadedFile.
        return None

    def _stop(self) -> None:
        if self.request is not None:
            self.request.upload_too_large = True
        raise StopUpload(connection_reset=True)


def files_from_request(request: HttpRequest, field: str = "file") -> list[UploadedFile]:
    """The files uploaded in ``field``; ``UploadRejected`` if the limit stopped them or none came.

    Raises ``UploadRejected("too_large")`` when ``LimitedUploadHandler`` stopped the
    upload (no file of that request is kept), ``UploadRejected("missing")`` when the
    request holds no file in ``field``.
    """
    files = request.FILES.getlist(field)
    if getattr(request, "upload_too_large", False):
        raise UploadRejected(
            "too_large",
            f"files may be at most {settings.UPLOAD_MAX_BYTES} bytes each "
            f"(and {settings.UPLOAD_MAX_REQUEST_BYTES} bytes in one request)",
        )
    if not files:
        raise UploadRejected("missing", f"no file was sent in the {field!r} field")
    return files
