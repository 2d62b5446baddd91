"""HTTP answers shared by the pages and the API: JSON errors, and serving a stored upload
back to its owner without letting it act on this site."""

from __future__ import annotations

import re
import unicodedata
from pathlib import PurePosixPath
from urllib.parse import quote

from django.http import FileResponse, JsonResponse

from uploads.files import OCTET_STREAM
from uploads.models import Upload

# Types a browser may render or run: served as opaque bytes, whatever the file is. Not
# text/plain: an attachment is saved, never shown, and octet-stream is the type no
# browser (old ones with their own sniffing included) will try to interpret.
ACTIVE_TYPES = frozenset(
    {
        "text/html",
        "application/xhtml+xml",
        "image/svg+xml",
        "text/xml",
        "application/xml",
        "text/xsl",
        "application/xslt+xml",
        "text/javascript",
        "application/javascript",
        "application/ecmascript",
        "text/ecmascript",
        "application/x-shockwave-flash",
        "application/pdf",
        "text/vtt",
        "multipart/x-mixed-replace",
    }
)
# The header that makes a response inert even if a browser ends up displaying it: no
# script, no plugins, no same-origin access, no network requests.
DOWNLOAD_CSP = "default-src 'none'; sandbox"
_UNSAFE_IN_QUOTED = re.compile(r'[\x00-\x1f\x7f"\\%;]')


def json_error(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> JsonResponse:
    """The JSON error response: ``{"error": {"code": code, "message": message}}``."""
    return JsonResponse(
        {"error": {"code": code, "message": message}}, status=status, headers=headers
    )


# Far more digits than any id or page number has, far fewer than int()'s limit (4300),
# past which int() raises instead of answering.
MAX_NUMBER_DIGITS = 30


def positive_int_or_none(raw: str) -> int | None:
    """``raw`` as an integer of at least 1, or ``None`` when it is not one (or absurdly long)."""
    if not raw or len(raw) > MAX_NUMBER_DIGITS or not raw.isascii() or not raw.isdecimal():
        return None
    number = int(raw)
    return number if number >= 1 else None


def served_content_type(content_type: str) -> str:
    """The ``Content-Type`` to send for a stored type: active types become octet-stream."""
    base = content_type.split(";", 1)[0].strip().lower()
    if not base or base in ACTIVE_TYPES or base.endswith(("+xml", "script")):
        return OCTET_STREAM
    return base


def ascii_fallback_name(name: str) -> str:
    """An ASCII stand-in for ``name`` for clients that ignore ``filename*``."""
    ascii_name = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
    ascii_name = _UNSAFE_IN_QUOTED.sub("_", ascii_name).strip(" .")
    if not PurePosixPath(ascii_name).stem.strip("_ "):
        ascii_name = "download" + PurePosixPath(ascii_name).suffix
    return ascii_name


def content_disposition(name: str) -> str:
    """``attachment`` with an ASCII ``filename=`` and the exact UTF-8 ``filename*`` (RFC 6266)."""
    return (
        f'attachment; filename="{ascii_fallback_name(name)}"; '
        f"filename*=UTF-8''{quote(name, safe='')}"
    )


def attachment_response(upload: Upload) -> FileResponse:
    """Stream ``upload``'s file as a download that cannot run script in this origin.

    Always an attachment; ``X-Content-Type-Options: nosniff`` so the browser keeps the
    sent type; ``Content-Security-Policy: default-src 'none'; sandbox`` so that, even
    opened in a tab, HTML or SVG runs no script and has no access to the site; HTML, SVG,
    XML, script (and PDF, whose viewers run script) are sent as
    ``application/octet-stream``.
    """
    response = FileResponse(
        upload.file.open("rb"),
        content_type=served_content_type(upload.content_type),
    )
    if "Content-Length" not in response:
        # A streamed object (MEDIA_STORAGE=s3) cannot be measured by seeking; the row
        # has its size, so a download still announces it, as from the local disk.
        response["Content-Length"] = str(upload.size)
    response["Content-Disposition"] = content_disposition(upload.original_name)
    response["X-Content-Type-Options"] = "nosniff"
    response["Content-Security-Policy"] = DOWNLOAD_CSP
    response["Cross-Origin-Resource-Policy"] = "same-origin"
    response["Cache-Control"] = "private, no-store"
    response["Referrer-Policy"] = "no-referrer"
    return response
