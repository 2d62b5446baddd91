"""The web pages: sign in and out, the list with live badges, upload, detail, download, delete.

Most tests run inside the test transaction (nothing published on commit is sent). One
test drives a real worker and watches the badges reach ``done`` through the polling
endpoint and the list page.
"""

from __future__ import annotations

import re

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client

from events.models import Delivery, Event
from tests.factories import upload_consumers, upload_text
from tests.processes import wait_for
from uploads.events import FILE_DELETED, FILE_UPLOADED
from uploads.models import Upload
from uploads.selectors import ConsumerState, delivery_states, upload_as_json

pytestmark = pytest.mark.django_db

PASSWORD = "correct horse battery"


def badges(html: str) -> list[tuple[str, str, str]]:
    """``(class, data-consumer, data-state)`` of every badge on a page."""
    return re.findall(
        r'<span class="(badge badge-[a-z]+)" data-consumer="([^"]+)" data-state="([^"]+)"', html
    )


# ------------------------------------------------------------------------------
# Signing in and out
# ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "url",
    ["/", "/uploads/new/", "/uploads/1/", "/uploads/1/download/", "/uploads/1/delete/", "/search/"],
)
def test_pages_redirect_anonymous_users_to_sign_in(client, url):
    response = client.get(url)

    assert response.status_code == 302
    assert response["Location"] == f"/accounts/login/?next={url}"


def test_states_endpoint_answers_401_json_when_signed_out(client):
    response = client.get("/uploads/states/", {"ids": "1"})

    assert response.status_code == 401
    assert response.json()["error"]["code"] == "not_authenticated"


def test_sign_in_page_has_labelled_fields(client):
    response = client.get("/accounts/login/")

    assert response.status_code == 200
    html = response.content.decode()
    assert '<label for="id_username">' in html and '<label for="id_password">' in html


def test_signing_in_goes_to_the_uploads_and_a_wrong_password_does_not(client, user):
    wrong = client.post("/accounts/login/", {"username": "alice", "password": "nope"})
    assert wrong.status_code == 200
    assert "didn't match" in wrong.content.decode()

    right = client.post("/accounts/login/", {"username": "alice", "password": PASSWORD})
    assert right.status_code == 302
    assert right["Location"] == "/"
    assert client.get("/").status_code == 200


def test_signing_out_is_a_post_and_ends_the_session(signed_in):
    assert signed_in.get("/accounts/logout/").status_code == 405

    response = signed_in.post("/accounts/logout/")

    assert response.status_code == 302
    assert response["Location"] == "/accounts/login/"
    assert signed_in.get("/").status_code == 302


def test_every_page_has_the_site_navigation(signed_in, user):
    upload = upload_text(user)
    for url in ["/", "/uploads/new/", f"/uploads/{upload.pk}/", "/search/?q=fox"]:
        html = signed_in.get(url).content.decode()
        assert 'href="/uploads/new/"' in html and 'href="/search/"' in html, url
        assert 'action="/accounts/logout/"' in html, url


# ------------------------------------------------------------------------------
# The list
# ------------------------------------------------------------------------------
def test_list_shows_only_my_uploads_newest_first(signed_in, user, other_user):
    older = upload_text(user, name="older.txt")
    newer = upload_text(user, name="newer.txt")
    upload_text(other_user, name="bobs-secret.txt")

    html = signed_in.get("/").content.decode()

    assert "bobs-secret.txt" not in html
    assert html.index("newer.txt") < html.index("older.txt")
    ids = re.findall(r'data-upload-id="(\d+)"', html)
    assert ids == [str(newer.pk), str(older.pk)]


def test_list_shows_a_pending_badge_per_consumer_and_polls(signed_in, user):
    upload_text(user)

    html = signed_in.get("/").content.decode()

    assert badges(html) == [("badge badge-pending", name, "pending") for name in upload_consumers()]
    assert 'data-states-url="/uploads/states/"' in html
    assert 'aria-live="polite"' in html


def test_list_badges_map_ledger_states_for_people(signed_in, user):
    upload = upload_text(user)
    event = Event.objects.get(aggregate_id=str(upload.pk), type=FILE_UPLOADED)
    Delivery.objects.filter(event=event, consumer="notifications").update(state="done")
    Delivery.objects.filter(event=event, consumer="indexing").update(state="dead")
    Delivery.objects.filter(event=event, consumer="audit").update(state="retrying")

    html = signed_in.get("/").content.decode()

    shown = {name: (css, label) for css, name, label in badges(html)}
    assert list(shown) == upload_consumers()
    assert shown["notifications"] == ("badge badge-done", "done")
    assert shown["indexing"] == ("badge badge-failed", "failed")
    assert shown["audit"] == ("badge badge-retrying", "retrying")


def test_list_is_paginated(signed_in, user):
    for number in range(21):
        upload_text(user, name=f"file-{number:02}.txt")

    first = signed_in.get("/").content.decode()
    second = signed_in.get("/", {"page": 2}).content.decode()

    assert first.count("data-upload-id=") == 20 and "file-20.txt" in first
    assert second.count("data-upload-id=") == 1 and "file-00.txt" in second
    assert "Page 2 of 2" in second


def test_empty_list_invites_a_first_upload(signed_in):
    html = signed_in.get("/").content.decode()

    assert "No uploads yet" in html


# ------------------------------------------------------------------------------
# The states endpoint the badges poll
# ------------------------------------------------------------------------------
def test_states_endpoint_returns_my_uploads_and_omits_others(signed_in, user, other_user):
    mine = upload_text(user)
    theirs = upload_text(other_user)

    response = signed_in.get("/uploads/states/", {"ids": f"{mine.pk},{theirs.pk},999999"})

    assert response.status_code == 200
    assert response.json() == {str(mine.pk): dict.fromkeys(upload_consumers(), "pending")}


def test_states_endpoint_omits_an_id_larger_than_any_row_can_have(signed_in, user):
    mine = upload_text(user)

    response = signed_in.get("/uploads/states/", {"ids": f"{mine.pk},{2**64}"})

    assert response.status_code == 200
    assert list(response.json()) == [str(mine.pk)]


@pytest.mark.parametrize(
    "ids", ["1,x", "-1", ",".join(str(n) for n in range(1, 102)), "9" * 5000, f"1,{'9' * 5000}"]
)
def test_states_endpoint_refuses_malformed_ids(signed_in, ids):
    response = signed_in.get("/uploads/states/", {"ids": ids})

    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_ids"


def test_list_page_with_a_huge_page_number_is_not_a_500(signed_in, user):
    upload_text(user)

    response = signed_in.get("/", {"page": "9" * 5000})

    assert response.status_code == 200


def test_states_endpoint_is_get_only(signed_in):
    assert signed_in.post("/uploads/states/").status_code == 405


def test_delivery_states_reads_the_current_event_and_lists_every_consumer(user):
    upload = upload_text(user)
    Delivery.objects.filter(event__aggregate_id=str(upload.pk), consumer="audit").delete()
    Delivery.objects.filter(event__aggregate_id=str(upload.pk), consumer="indexing").update(
        state="dead", attempts=3, last_error="boom"
    )

    states = delivery_states([upload])[upload.pk]

    assert list(states) == upload_consumers()
    assert states["indexing"] == ConsumerState("indexing", "failed", 3, "boom")
    assert states["audit"] == ConsumerState("audit", "pending")
    assert upload_as_json(upload, {upload.pk: states})["deliveries"] == {
        **dict.fromkeys(upload_consumers(), "pending"),
        "indexing": "failed",
    }


def test_delivery_states_is_one_query_for_a_page(user, django_assert_num_queries):
    uploads = [upload_text(user, name=f"{n}.txt") for n in range(5)]

    with django_assert_num_queries(1):
        states = delivery_states(uploads)

    assert set(states) == {upload.pk for upload in uploads}


# ------------------------------------------------------------------------------
# Uploading
# ------------------------------------------------------------------------------
def test_upload_form_has_a_labelled_multiple_file_input(signed_in):
    response = signed_in.get("/uploads/new/")

    assert response.status_code == 200
    html = response.content.decode()
    assert 'id="upload-form"' in html and 'enctype="multipart/form-data"' in html
    assert re.search(r'<input type="file" name="file" id="id_file" multiple', html)
    assert '<label for="id_file">' in html
    assert ">Upload</button>" in html


def test_plain_form_upload_redirects_to_the_new_upload(signed_in, user):
    response = signed_in.post(
        "/uploads/new/", {"file": SimpleUploadedFile("notes.txt", b"hello there")}
    )

    upload = Upload.objects.get(owner=user)
    assert response.status_code == 302
    assert response["Location"] == f"/uploads/{upload.pk}/"
    assert upload.original_name == "notes.txt" and upload.content_type == "text/plain"
    page = signed_in.get(response["Location"]).content.decode()
    assert "Uploaded “notes.txt”." in page


def test_plain_form_upload_of_several_files_goes_to_the_list(signed_in, user):
    files = [SimpleUploadedFile(f"{n}.txt", b"text %d" % n) for n in range(3)]

    response = signed_in.post("/uploads/new/", {"file": files}, follow=True)

    assert response.redirect_chain == [("/", 302)]
    assert Upload.objects.filter(owner=user).count() == 3


def test_plain_form_keeps_good_files_and_names_the_refused_ones(signed_in, user):
    files = [SimpleUploadedFile("good.txt", b"fine"), SimpleUploadedFile("empty.txt", b"")]

    response = signed_in.post("/uploads/new/", {"file": files}, follow=True)

    html = response.content.decode()
    assert response.redirect_chain == [("/", 302)]
    assert "“empty.txt” was refused: the file is empty." in html
    assert [u.original_name for u in Upload.objects.filter(owner=user)] == ["good.txt"]


def test_plain_form_without_a_file_is_400_with_a_message(signed_in):
    response = signed_in.post("/uploads/new/", {})

    assert response.status_code == 400
    assert "Nothing was uploaded" in response.content.decode()


def test_plain_form_with_an_empty_file_is_400_with_a_message(signed_in):
    response = signed_in.post("/uploads/new/", {"file": SimpleUploadedFile("e.txt", b"")})

    assert response.status_code == 400
    assert "“e.txt” was refused: the file is empty." in response.content.decode()
    assert not Upload.objects.exists()


def test_script_upload_answers_201_json_with_the_pages_url(signed_in, user):
    response = signed_in.post(
        "/uploads/new/",
        {"file": SimpleUploadedFile("a.md", b"# Title")},
        headers={"Accept": "application/json"},
    )

    upload = Upload.objects.get(owner=user)
    assert response.status_code == 201
    assert response.json() == {"id": upload.pk, "url": f"/uploads/{upload.pk}/"}
    assert upload.content_type == "text/markdown"


@pytest.mark.parametrize(
    ("data", "status", "code"),
    [
        ({}, 400, "missing"),
        ({"file": SimpleUploadedFile("e.txt", b"")}, 400, "empty"),
        (
            {"file": [SimpleUploadedFile("a.txt", b"a"), SimpleUploadedFile("b.txt", b"b")]},
            400,
            "too_many_files",
        ),
    ],
)
def test_script_upload_errors_are_json(signed_in, data, status, code):
    response = signed_in.post("/uploads/new/", data, headers={"Accept": "application/json"})

    assert response.status_code == status
    assert response.json()["error"]["code"] == code
    assert response.json()["error"]["message"]
    assert not Upload.objects.exists()


def test_upload_records_the_requests_correlation_id(signed_in):
    signed_in.post(
        "/uploads/new/",
        {"file": SimpleUploadedFile("a.txt", b"abc")},
        headers={"X-Request-ID": "web-test-1"},
    )

    assert Event.objects.get(type=FILE_UPLOADED).correlation_id == "web-test-1"


def test_upload_form_is_csrf_protected(user):
    client = Client(enforce_csrf_checks=True)
    client.force_login(user)

    response = client.post("/uploads/new/", {"file": SimpleUploadedFile("a.txt", b"abc")})

    assert response.status_code == 403
    assert not Upload.objects.exists()


# ------------------------------------------------------------------------------
# Detail, download
# ------------------------------------------------------------------------------
RAW_ERROR = "OSError: [Errno 13] /srv/media/uploads/ab12 redis://:hunter2@10.0.0.5 <read>"


def test_detail_shows_facts_states_and_a_short_safe_reason_to_the_owner(signed_in, user):
    upload = upload_text(user, name="report.txt")
    Delivery.objects.filter(event__aggregate_id=str(upload.pk), consumer="indexing").update(
        state="dead", attempts=2, last_error=RAW_ERROR
    )

    response = signed_in.get(f"/uploads/{upload.pk}/")

    assert response.status_code == 200
    html = response.content.decode()
    assert "<h1" in html and "report.txt" in html and upload.sha256 in html
    assert ("badge badge-failed", "indexing", "failed") in badges(html)
    assert "hunter2" not in html and "/srv/media" not in html and "Errno" not in html
    assert "could not be processed" in html
    assert f'href="/uploads/{upload.pk}/download/"' in html
    assert f'action="/uploads/{upload.pk}/delete/"' in html and "data-confirm=" in html


def test_staff_owner_sees_the_full_error_text(client, user):
    user.is_staff = True
    user.save()
    client.force_login(user)
    upload = upload_text(user, name="report.txt")
    Delivery.objects.filter(event__aggregate_id=str(upload.pk), consumer="indexing").update(
        state="retrying", attempts=1, last_error="could not <read> the file"
    )

    html = client.get(f"/uploads/{upload.pk}/").content.decode()

    assert "could not &lt;read&gt; the file" in html


def test_download_is_my_file_as_an_attachment(signed_in, user):
    upload = upload_text(user, text="the quick brown fox", name="notes.txt")

    response = signed_in.get(f"/uploads/{upload.pk}/download/")

    assert response.status_code == 200
    assert b"".join(response.streaming_content) == b"the quick brown fox"
    assert response["Content-Disposition"].startswith("attachment;")
    assert response["X-Content-Type-Options"] == "nosniff"


@pytest.mark.parametrize(
    ("method", "suffix"),
    [("get", ""), ("get", "download/"), ("get", "delete/"), ("post", "delete/")],
)
def test_another_users_upload_is_404(signed_in, other_user, method, suffix):
    theirs = upload_text(other_user)

    response = getattr(signed_in, method)(f"/uploads/{theirs.pk}/{suffix}")

    assert response.status_code == 404
    assert Upload.objects.filter(pk=theirs.pk).exists()


@pytest.mark.parametrize("suffix", ["", "download/", "delete/"])
def test_a_missing_upload_is_404(signed_in, suffix):
    assert signed_in.get(f"/uploads/999999/{suffix}").status_code == 404


@pytest.mark.parametrize(
    ("method", "url"),
    [
        ("post", "/"),
        ("post", "/uploads/{pk}/"),
        ("post", "/uploads/{pk}/download/"),
        ("put", "/uploads/new/"),
        ("delete", "/uploads/{pk}/delete/"),
    ],
)
def test_wrong_methods_are_405(signed_in, user, method, url):
    upload = upload_text(user)

    response = getattr(signed_in, method)(url.format(pk=upload.pk))

    assert response.status_code == 405


# ------------------------------------------------------------------------------
# Deleting
# ------------------------------------------------------------------------------
def test_delete_without_script_asks_first(signed_in, user):
    upload = upload_text(user, name="keep-or-not.txt")

    response = signed_in.get(f"/uploads/{upload.pk}/delete/")

    assert response.status_code == 200
    html = response.content.decode()
    assert "Delete “keep-or-not.txt”?" in html
    assert 'method="post"' in html
    assert Upload.objects.filter(pk=upload.pk).exists()


def test_delete_removes_the_upload_publishes_and_says_so(signed_in, user):
    upload = upload_text(user, name="gone.txt")

    response = signed_in.post(
        f"/uploads/{upload.pk}/delete/", headers={"X-Request-ID": "web-delete-1"}, follow=True
    )

    assert response.redirect_chain == [("/", 302)]
    assert "Deleted “gone.txt”." in response.content.decode()
    assert not Upload.objects.filter(pk=upload.pk).exists()
    event = Event.objects.get(type=FILE_DELETED, aggregate_id=str(upload.pk))
    assert event.actor == user.pk and event.correlation_id == "web-delete-1"


# ------------------------------------------------------------------------------
# The badges catch up with a real worker
# ------------------------------------------------------------------------------
def test_badges_go_from_pending_to_done_as_the_consumers_finish(live_worker, client, user):
    client.force_login(user)
    response = client.post(
        "/uploads/new/",
        {"file": SimpleUploadedFile("catch-up.txt", b"a puffin on the cliff")},
        headers={"Accept": "application/json"},
    )
    upload_id = str(response.json()["id"])

    first = badges(client.get("/").content.decode())
    assert {consumer for _, consumer, _ in first} == set(upload_consumers())
    assert {state for _, _, state in first} <= {"pending", "retrying", "done"}

    def all_done() -> bool:
        states = client.get("/uploads/states/", {"ids": upload_id}).json()[upload_id]
        return set(states.values()) == {"done"}

    wait_for(all_done, timeout=60, what="every badge done")
    html = client.get("/").content.decode()
    assert badges(html) == [("badge badge-done", name, "done") for name in upload_consumers()]
    assert "catch-up.txt" in client.get("/search/", {"q": "puffin"}).content.decode()


def test_favicon_is_served_to_anyone_and_every_page_links_an_icon(client, signed_in):
    from django.contrib.staticfiles import finders

    response = Client().get("/favicon.ico")

    assert response.status_code == 301
    assert response["Location"].endswith("/uploads/favicon.svg")
    assert finders.find("uploads/favicon.svg")
    assert '<link rel="icon"' in signed_in.get("/").content.decode()
