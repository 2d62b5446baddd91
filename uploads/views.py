"""Web pages: thin adapters over ``uploads.services`` and ``uploads.selectors``.

Every page is the signed-in user's own: another user's upload is a 404, never a 403.
"""

from __future__ import annotations

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_http_methods, require_safe

from uploads.exceptions import UploadGone, UploadRejected
from uploads.http import attachment_response, json_error, positive_int_or_none
from uploads.intake import files_from_request
from uploads.models import Upload
from uploads.selectors import delivery_states, get_owned_upload, uploads_for_owner
from uploads.services import create_upload, delete_upload

UPLOADS_PER_PAGE = 20
# The polling endpoint answers for at most this many uploads at once (more than a page).
MAX_STATE_IDS = 100
# The largest id a database row can have; a larger number names no upload (and SQLite
# refuses to bind it).
MAX_UPLOAD_ID = 2**63 - 1


def _wants_json(request: HttpRequest) -> bool:
    return "application/json" in request.headers.get("Accept", "")


def _any_unsettled(states: dict[int, dict]) -> bool:
    return any(not s.settled for per_upload in states.values() for s in per_upload.values())


@require_safe
@login_required
def index(request: HttpRequest) -> HttpResponse:
    """``/``: the user's uploads, newest first, with each consumer's state."""
    page = Paginator(uploads_for_owner(request.user), UPLOADS_PER_PAGE).get_page(
        request.GET.get("page")
    )
    uploads = list(page.object_list)
    states = delivery_states(uploads)
    rows = [(upload, states[upload.pk]) for upload in uploads]
    return render(
        request,
        "uploads/index.html",
        {"page": page, "rows": rows, "polling": _any_unsettled(states)},
    )


@require_http_methods(["GET", "HEAD", "POST"])
@login_required
def new(request: HttpRequest) -> HttpResponse:
    """``/uploads/new/``: the upload form; a POST stores each file in the ``file`` field.

    With ``Accept: application/json`` (the page's script, one file per request) it
    answers ``201 {"id", "url"}`` or ``{"error": {"code", "message"}}`` with 400, 413
    or 415. Without it, one stored file redirects to its page, several to ``/``, and a
    refusal re-renders the form with a message per refused file.
    """
    context = {"max_bytes": settings.UPLOAD_MAX_BYTES}
    if request.method != "POST":
        return render(request, "uploads/new.html", context)
    try:
        files = files_from_request(request, "file")
    except UploadRejected as exc:
        status = exc.http_status
        if _wants_json(request):
            return json_error(status, exc.code, exc.message, exc.http_headers)
        messages.error(request, f"Nothing was uploaded: {exc.message}.")
        return render(request, "uploads/new.html", context, status=status)

    if _wants_json(request):
        if len(files) != 1:
            return json_error(400, "too_many_files", "send one file per request")
        try:
            upload = create_upload(
                owner=request.user, file=files[0], correlation_id=request.correlation_id
            )
        except UploadRejected as exc:
            return json_error(exc.http_status, exc.code, exc.message, exc.http_headers)
        url = reverse("uploads:detail", args=[upload.pk])
        return JsonResponse({"id": upload.pk, "url": url}, status=201)

    created: list[Upload] = []
    refusals: list[UploadRejected] = []
    for file in files:
        try:
            created.append(
                create_upload(owner=request.user, file=file, correlation_id=request.correlation_id)
            )
        except UploadRejected as exc:
            refusals.append(exc)
            messages.error(request, f"“{file.name}” was refused: {exc.message}.")
    for upload in created:
        messages.success(request, f"Uploaded “{upload.original_name}”.")
    if not created:
        refusal = refusals[0]
        response = render(request, "uploads/new.html", context, status=refusal.http_status)
        for header, value in refusal.http_headers.items():
            response[header] = value
        return response
    if len(created) == 1 and not refusals:
        return redirect("uploads:detail", upload_id=created[0].pk)
    return redirect("uploads:index")


@require_safe
@login_required
def detail(request: HttpRequest, upload_id: int) -> HttpResponse:
    """``/uploads/<id>/``: details, each consumer's state, download, delete.

    Owners see a short reason when a consumer failed or retries; staff see the raw error.
    """
    upload = get_owned_upload(request.user, upload_id)
    states = delivery_states([upload])
    return render(
        request,
        "uploads/detail.html",
        {
            "upload": upload,
            "states": states[upload.pk],
            "polling": _any_unsettled(states),
            "show_raw_errors": request.user.is_staff,
        },
    )


@require_safe
@login_required
def download(request: HttpRequest, upload_id: int) -> HttpResponse:
    """``/uploads/<id>/download/``: the file as an inert attachment."""
    return attachment_response(get_owned_upload(request.user, upload_id))


@require_http_methods(["GET", "HEAD", "POST"])
@login_required
def delete(request: HttpRequest, upload_id: int) -> HttpResponse:
    """``/uploads/<id>/delete/``: GET asks for confirmation; POST deletes and goes to ``/``."""
    upload = get_owned_upload(request.user, upload_id)
    if request.method != "POST":
        return render(request, "uploads/confirm_delete.html", {"upload": upload})
    name = upload.original_name
    try:
        delete_upload(upload, actor=request.user, correlation_id=request.correlation_id)
    except UploadGone:
        # Deleted by another request between the read above and here.
        raise Http404("no such upload") from None
    messages.success(request, f"Deleted “{name}”.")
    return redirect("uploads:index")


@require_safe
def states(request: HttpRequest) -> JsonResponse:
    """``/uploads/states/?ids=1,2``: ``{"<id>": {consumer: state}}`` for the user's uploads.

    Ids that are not the user's (or no longer exist) are left out, exactly as if they
    had never existed. The pages poll it while a badge is still pending or retrying.
    """
    if not request.user.is_authenticated:
        return json_error(401, "not_authenticated", "sign in again")
    raw = [part for part in request.GET.get("ids", "").split(",") if part.strip()]
    numbers = [positive_int_or_none(part.strip()) for part in raw[: MAX_STATE_IDS + 1]]
    if len(raw) > MAX_STATE_IDS or None in numbers:
        return json_error(
            400, "invalid_ids", f"ids must be up to {MAX_STATE_IDS} comma-separated numbers"
        )
    ids = {n for n in numbers if n is not None and n <= MAX_UPLOAD_ID}
    uploads = uploads_for_owner(request.user).filter(pk__in=ids) if ids else []
    result = delivery_states(uploads)
    return JsonResponse(
        {
            str(upload_id): {name: state.state for name, state in per_upload.items()}
            for upload_id, per_upload in result.items()
        }
    )
