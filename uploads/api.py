"""JSON API: thin views over ``uploads.services`` and ``uploads.selectors``.

Authentication is ``Authorization: Bearer <token>`` (``uploads.tokens``) or the Django
session. A request that authenticates with a token needs no CSRF token (a browser never
adds that header by itself); a session request must pass Django's CSRF check on unsafe
methods. Every error is JSON, ``{"error": {"code": ..., "message": ...}}``, with a code
that stays stable when the message is reworded:

=====  ========================================================================
400    ``missing`` (no ``file`` field), ``empty``, ``too_many_files``,
       ``invalid_page``, ``invalid_page_size`` (not a positive integer, or over 100),
       ``bad_request`` (a body Django refuses to parse: too many fields, malformed)
401    ``not_authenticated`` (no credentials), ``invalid_token``
403    ``csrf_failed`` (session requests only)
404    ``not_found`` (also another user's upload), ``page_not_found`` (past the end)
405    ``method_not_allowed`` (with ``Allow``)
413    ``too_large`` (a file, or a form body over Django's limit)
415    ``type_not_allowed``
=====  ========================================================================
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from django.core.exceptions import (
    BadRequest,
    PermissionDenied,
    RequestDataTooBig,
    SuspiciousOperation,
    TooManyFilesSent,
)
from django.core.paginator import Paginator
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.http.multipartparser import MultiPartParserError
from django.middleware.csrf import CsrfViewMiddleware
from django.urls import reverse
from django.views.decorators.csrf import csrf_exempt

from uploads.exceptions import UploadGone, UploadRejected
from uploads.http import attachment_response, json_error, positive_int_or_none
from uploads.intake import files_from_request
from uploads.selectors import delivery_states, get_owned_upload, upload_as_json, uploads_for_owner
from uploads.services import create_upload, delete_upload
from uploads.tokens import user_for_token

DEFAULT_PAGE_SIZE = 20
MAX_PAGE_SIZE = 100
UNSAFE_METHODS = {"POST", "PUT", "PATCH", "DELETE"}

View = Callable[..., HttpResponse]


class ApiError(Exception):
    """Raised inside an API view to answer with ``json_error(status, code, message)``."""

    def __init__(
        self, status: int, code: str, message: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}


class _CsrfCheck(CsrfViewMiddleware):
    """Django's CSRF check, returning the failure reason instead of the HTML 403 page."""

    def _reject(self, request: HttpRequest, reason: str) -> str:  # type: ignore[override]
        return reason


def _csrf_failure(request: HttpRequest) -> str | None:
    """Why ``request`` fails Django's CSRF check, or ``None`` when it passes."""
    check = _CsrfCheck(lambda request: HttpResponse())
    check.process_request(request)
    reason = check.process_view(request, None, (), {})
    return reason if isinstance(reason, str) else None


def _authenticate(request: HttpRequest) -> None:
    """Set ``request.user`` from a Bearer token, else keep the session's; raise ``ApiError``."""
    header = request.headers.get("Authorization")
    if header is not None:
        scheme, _, key = header.partition(" ")
        user = user_for_token(key.strip()) if scheme.lower() == "bearer" else None
        if user is None:
            raise ApiError(
                401,
                "invalid_token",
                "the API token is unknown, revoked or malformed",
                {"WWW-Authenticate": 'Bearer error="invalid_token"'},
            )
        request.user = user
        return
    if not request.user.is_authenticated:
        raise ApiError(
            401,
            "not_authenticated",
            "send Authorization: Bearer <token>, or sign in",
            {"WWW-Authenticate": "Bearer"},
        )
    if request.method in UNSAFE_METHODS:
        reason = _csrf_failure(request)
        if reason is not None:
            raise ApiError(403, "csrf_failed", f"CSRF check failed: {reason}")


def api_view(*methods: str) -> Callable[[View], View]:
    """Make ``view`` an API endpoint: allowed ``methods``, authentication, JSON errors.

    The view is exempt from the CSRF middleware because ``_authenticate`` runs the same
    check itself, for session requests only.
    """
    allowed = ", ".join(methods)

    def decorator(view: View) -> View:
        @csrf_exempt
        @functools.wraps(view)
        def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
            if request.method not in methods:
                return json_error(
                    405,
                    "method_not_allowed",
                    f"{request.method} is not allowed here; use {allowed}",
                    {"Allow": allowed},
                )
            try:
                _authenticate(request)
                return view(request, *args, **kwargs)
            except ApiError as exc:
                return json_error(exc.status, exc.code, exc.message, exc.headers)
            except UploadRejected as exc:
                return json_error(exc.http_status, exc.code, exc.message, exc.http_headers)
            except (Http404, UploadGone):
                return json_error(404, "not_found", "no such upload")
            except PermissionDenied:
                return json_error(403, "permission_denied", "you may not do that")
            except RequestDataTooBig:
                return json_error(
                    413, "too_large", "the request body is over the server's limit for forms"
                )
            except TooManyFilesSent:
                return json_error(400, "too_many_files", "send one file per request")
            except (SuspiciousOperation, BadRequest, MultiPartParserError):
                # Django's other refusals to parse a body (too many fields, a malformed
                # multipart body) would answer its HTML 400 page.
                return json_error(400, "bad_request", "the request body could not be parsed")

        return wrapper

    return decorator


def _positive_int(request: HttpRequest, name: str, default: int, code: str) -> int:
    raw = request.GET.get(name)
    if raw is None or raw == "":
        return default
    number = positive_int_or_none(raw)
    if number is None:
        shown = raw if len(raw) <= 40 else raw[:40] + "…"
        raise ApiError(400, code, f"{name} must be a positive integer, not {shown!r}")
    return number


def _page_url(request: HttpRequest, page: int) -> str:
    query = request.GET.copy()
    query["page"] = str(page)
    return request.build_absolute_uri(f"{request.path}?{query.urlencode()}")


def _list_uploads(request: HttpRequest) -> JsonResponse:
    number = _positive_int(request, "page", 1, "invalid_page")
    size = _positive_int(request, "page_size", DEFAULT_PAGE_SIZE, "invalid_page_size")
    if size > MAX_PAGE_SIZE:
        # Refused rather than capped: a client asking for 500 must not think it got them all.
        raise ApiError(
            400, "invalid_page_size", f"page_size may be at most {MAX_PAGE_SIZE}, not {size}"
        )
    paginator = Paginator(uploads_for_owner(request.user), size)
    # num_pages is 1 for an empty list, so page 1 always exists.
    if number > paginator.num_pages:
        raise ApiError(
            404, "page_not_found", f"page {number} is past the last page ({paginator.num_pages})"
        )
    page = paginator.page(number)
    uploads = list(page.object_list)
    states = delivery_states(uploads)
    return JsonResponse(
        {
            "count": paginator.count,
            "next": _page_url(request, number + 1) if page.has_next() else None,
            "previous": _page_url(request, number - 1) if page.has_previous() else None,
            "results": [upload_as_json(upload, states) for upload in uploads],
        }
    )


def _create_upload(request: HttpRequest) -> JsonResponse:
    files = files_from_request(request, "file")
    if len(files) > 1:
        raise ApiError(400, "too_many_files", "send one file per request")
    upload = create_upload(owner=request.user, file=files[0], correlation_id=request.correlation_id)
    response = JsonResponse(upload_as_json(upload, delivery_states([upload])), status=201)
    response["Location"] = reverse("api:upload", args=[upload.pk])
    return response


@api_view("GET", "POST")
def uploads_collection(request: HttpRequest) -> HttpResponse:
    """GET: the user's uploads, newest first, paginated. POST: upload the ``file`` field."""
    if request.method == "POST":
        return _create_upload(request)
    return _list_uploads(request)


@api_view("GET", "DELETE")
def upload_detail(request: HttpRequest, upload_id: int) -> HttpResponse:
    """GET: one upload with its delivery states. DELETE: delete it (publishes file.deleted)."""
    upload = get_owned_upload(request.user, upload_id)
    if request.method == "DELETE":
        delete_upload(upload, actor=request.user, correlation_id=request.correlation_id)
        return HttpResponse(status=204)
    return JsonResponse(upload_as_json(upload, delivery_states([upload])))


@api_view("GET")
def upload_download(request: HttpRequest, upload_id: int) -> HttpResponse:
    """The stored file as an attachment."""
    return attachment_response(get_owned_upload(request.user, upload_id))


def not_found(request: HttpRequest, path: str = "") -> JsonResponse:
    """Any other path under /api/: a JSON 404 rather than the site's HTML page."""
    return json_error(404, "not_found", f"no API endpoint at {request.path}")
