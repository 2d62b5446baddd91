"""Why an upload was refused, with a stable code that views and commands can map."""

from __future__ import annotations


class UploadRejected(ValueError):
    """The file cannot be accepted, with a stable ``code`` and a message for people.

    Codes: ``missing`` (no file in the request), ``empty`` (zero bytes), ``too_large``
    (over ``UPLOAD_MAX_BYTES``), ``type_not_allowed`` (the type sniffed from the bytes is
    not in a non-empty ``UPLOAD_ALLOWED_TYPES``). Views map them to 400, 400, 413 and 415.
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
