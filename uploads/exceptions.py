"""Why an upload was refused, with a stable code that views and commands can map."""

from __future__ import annotations


class UploadRejected(ValueError):
    """The file cannot be accepted; ``code`` is one of ``empty``, ``too_large``, ``missing``."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
