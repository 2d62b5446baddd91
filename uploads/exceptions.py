"""Why an upload was refused, with a stable code that views and commands can map."""

from __future__ import annotations


class UploadRejected(ValueError):
    """The file cannot be accepted, with a stable ``code`` and a message for people.

    Codes: ``missing`` (no file in the request), ``empty`` (zero bytes), ``too_large``
    (over ``UPLOAD_MAX_BYTES``), ``type_not_allowed`` (the type sniffed from the bytes is
    not in a non-empty ``UPLOAD_ALLOWED_TYPES``), and the per-user limits of
    ``UploadLimitExceeded``. ``http_status`` maps them to 400, 400, 413, 415, 429 and 413
    for the pages and the API alike.
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    @property
    def http_status(self) -> int:
        """The status a web page or the API answers this refusal with."""
        return _HTTP_STATUS.get(self.code, 400)

    @property
    def http_headers(self) -> dict[str, str]:
        """Headers the answer carries (``Retry-After`` for a rate refusal)."""
        return {}


class UploadLimitExceeded(UploadRejected):
    """The owner is over a per-user limit: ``rate_limited`` (429) or ``quota_exceeded`` (413).

    ``retry_after`` (seconds) says when a ``rate_limited`` upload would be accepted.
    """

    def __init__(self, code: str, message: str, *, retry_after: int | None = None) -> None:
        super().__init__(code, message)
        self.retry_after = retry_after

    @property
    def http_headers(self) -> dict[str, str]:
        if self.retry_after is None:
            return {}
        return {"Retry-After": str(self.retry_after)}


_HTTP_STATUS = {
    "missing": 400,
    "empty": 400,
    "too_large": 413,
    "type_not_allowed": 415,
    "rate_limited": 429,
    "quota_exceeded": 413,
}


class UploadGone(LookupError):
    """The upload was deleted already (a double click, a retry, a stale object).

    ``delete_upload`` raises it and records nothing; pages and the API answer 404.
    """

    def __init__(self, upload_id: int) -> None:
        super().__init__(f"upload {upload_id} was already deleted")
        self.upload_id = upload_id
