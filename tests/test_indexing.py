"""The indexing consumer: text extraction, and an index that survives redelivery and disorder."""

from __future__ import annotations

import mimetypes
from pathlib import Path

import pytest
from celery.exceptions import SoftTimeLimitExceeded
from django.core.files import File
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.db import connection

from events.delivery import run_delivery
from events.models import Delivery, Event
from indexing import extraction, handlers, services
from indexing.extraction import Extraction
from indexing.models import IndexEntry
from tests.factories import settled, upload_consumers, upload_text
from tests.processes import wait_for
from uploads.services import create_upload, delete_upload

pytestmark = pytest.mark.django_db

FIXTURES = Path(__file__).resolve().parent / "fixtures"


def store(name: str, data: bytes | None = None) -> str:
    """Put a fixture (or ``data``) in default storage, as an upload would; its storage name."""
    if data is None:
        data = (FIXTURES / name).read_bytes()
    return default_storage.save(f"uploads/test/{name}", ContentFile(data))


def extract_stored(name: str, data: bytes | None = None, content_type: str = "") -> Extraction:
    extracted = services.extract_upload_text(
        upload_id=1,
        storage_name=store(name, data),
        name=name,
        content_type=content_type or mimetypes.guess_type(name)[0] or "",
    )
    assert extracted is not None
    return extracted


def deliver(event: Event) -> str:
    """Run the indexing delivery of ``event`` in this process, as a worker would."""
    delivery = Delivery.objects.get(event=event, consumer="indexing")
    outcome = run_delivery(delivery_id=delivery.pk, consumer_name="indexing")
    return outcome.outcome


def event_of(upload_id: int, event_type: str) -> Event:
    return Event.objects.get(aggregate_id=str(upload_id), type=event_type)


# ------------------------------------------------------------------------------
# Extraction, one fixture per type
# ------------------------------------------------------------------------------
def test_utf8_text_is_extracted_as_is():
    extracted = extract_stored("utf8.txt")

    assert "Grüße aus Köln" in extracted.text
    assert "東京" in extracted.text and "Київ" in extracted.text
    assert extracted.note == ""


def test_latin1_text_is_detected_and_decoded():
    extracted = extract_stored("latin1.txt")

    assert "Le café de la gare servait une crème brûlée délicieuse." in extracted.text
    assert "À côté, le garçon" in extracted.text
    assert "\ufffd" not in extracted.text


def test_markdown_and_csv_are_indexed_as_text():
    assert "**heron** migration" in extract_stored("notes.md").text
    assert 'kingfisher,3,"seen near the ""old"" bridge"' in extract_stored("birds.csv").text


def test_json_is_indexed_by_its_keys_and_values():
    text = extract_stored("survey.json").text.split("\n")

    assert {"title", "Bird survey", "puffin", "gannet", "17"} <= set(text)
    assert not any("{" in line or '"' in line for line in text)


def test_invalid_json_falls_back_to_plain_text():
    extracted = extract_stored("broken.json", b'{"bird": "shoebill", oops')

    assert "shoebill" in extracted.text
    assert "not valid JSON" in extracted.note


def test_html_text_is_kept_and_tags_scripts_and_styles_are_dropped():
    text = extract_stored("page.html").text

    assert "Osprey" in text and "Seen at dawn & dusk, near the café." in text
    assert "Monday\nTuesday" in text
    for dropped in ("scriptword", "alert", "trackerword", "stylesheetword", "<", "color"):
        assert dropped not in text


def test_pdf_text_is_extracted_from_every_page(pdf_extraction):
    extracted = extract_stored("report.pdf")

    assert "Quarterly report of the pelican observatory" in extracted.text
    assert "albatross" in extracted.text
    assert extracted.note == ""


def test_encrypted_pdf_is_indexed_by_name_with_the_reason(pdf_extraction):
    extracted = extract_stored("encrypted.pdf")

    assert extracted.text == ""
    assert extracted.note == "PDF is encrypted; indexed by name"


def test_malformed_pdf_is_indexed_by_name_with_the_reason(pdf_extraction):
    extracted = extract_stored("malformed.pdf")

    assert extracted.text == ""
    assert extracted.note.startswith("PDF could not be read (")
    assert extracted.note.endswith("; indexed by name")


def test_other_types_are_indexed_by_name_only():
    extracted = extract_stored("photo.png", b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4)

    assert extracted == Extraction("", "type image/png is not extracted; indexed by name")


def test_unknown_extension_with_a_text_content_type_is_read_as_text():
    extracted = extract_stored("README", b"plain words about a lapwing", content_type="text/x-rst")

    assert extracted.text == "plain words about a lapwing"


def test_huge_text_file_is_read_only_in_part_and_capped():
    data = b"spoonbill " * (extraction.MAX_TEXT_BYTES // 10 + 1000)

    extracted = extract_stored("huge.txt", data)

    assert len(extracted.text) == extraction.MAX_TEXT_CHARS
    assert extracted.text.startswith("spoonbill spoonbill")
    assert f"only the first {extraction.MAX_TEXT_BYTES} bytes read" in extracted.note
    assert f"text cut to {extraction.MAX_TEXT_CHARS} characters" in extracted.note


def test_truncated_read_does_not_garble_the_last_multibyte_character():
    data = "é".encode() * 10

    extracted = extraction.extract(data=data[:-1], kind="text", truncated=True)

    assert extracted.text == "é" * 9


def test_control_characters_and_highlight_marks_are_removed_from_text():
    data = f"a\x00b\x07c {extraction.HIGHLIGHT_START}forged{extraction.HIGHLIGHT_END}".encode()

    assert extraction.extract(data=data, kind="text").text == "abc forged"


def test_html_block_elements_separate_words_and_entities_are_decoded():
    html = b"<div>heron</div><div>egret</div><p>a&nbsp;b &lt;c&gt;</p>tail<br>next"

    text = extraction.extract(data=html, kind="html").text

    assert text.split("\n") == ["heron", "egret", "a\xa0b <c>", "tail", "next"]


def test_html_the_standard_library_parser_chokes_on_is_indexed_without_raising():
    # html.parser raises AssertionError on this; any parser error is the file's, not ours
    extracted = extraction.extract(data=b"<![" * 1000, kind="html")

    assert extracted.text == ""


def test_html_over_the_time_budget_is_indexed_by_name_and_says_so(monkeypatch):
    monkeypatch.setattr(extraction, "TIME_BUDGET_SECONDS", 0.0)

    extracted = extraction.extract(data=b"<p>word</p>" * 5000, kind="html")

    assert extracted.text == ""
    assert "time budget" in extracted.note and extracted.note.endswith("indexed by name")


@pytest.mark.parametrize("kind", ["html", "json", "text"])
def test_an_extractor_that_raises_is_indexed_by_name_never_retried(monkeypatch, kind):
    def broken(*args, **kwargs):
        raise AssertionError("parser bug")

    monkeypatch.setattr(extraction, "html_to_text", broken)
    monkeypatch.setattr(extraction, "_json_text", broken)
    monkeypatch.setattr(extraction, "_bounded", broken)

    extracted = extraction.extract(data=b"<p>{}</p>", kind=kind)

    assert extracted.text == ""
    assert "could not be read (AssertionError: parser bug)" in extracted.note


def test_an_extractor_stopped_by_the_soft_time_limit_is_indexed_by_name(monkeypatch):
    def slow(*args, **kwargs):
        raise SoftTimeLimitExceeded()

    monkeypatch.setattr(extraction, "html_to_text", slow)

    extracted = extraction.extract(data=b"<p>words</p>", kind="html")

    assert extracted == Extraction.name_only("text extraction ran out of time")


def test_stored_file_that_is_gone_is_indexed_by_name():
    extracted = services.extract_upload_text(
        upload_id=1, storage_name="uploads/none/missing", name="gone.txt", content_type=""
    )

    assert extracted == Extraction("", "stored file not found; indexed by name")


# ------------------------------------------------------------------------------
# The handler under redelivery and disorder, through the real delivery path
# ------------------------------------------------------------------------------
def test_uploaded_file_is_indexed_with_its_text(user):
    upload = upload_text(user, "a little egret by the river", name="egret.txt")

    assert deliver(event_of(upload.pk, "file.uploaded")) == "done"

    entry = IndexEntry.objects.get(upload_id=upload.pk)
    assert (entry.owner_id, entry.name, entry.text, entry.deleted) == (
        user.pk,
        "egret.txt",
        "a little egret by the river",
        False,
    )
    assert [hit.upload_id for hit in services.search_uploads(query="egret")] == [upload.pk]


def test_deleted_handled_before_uploaded_does_not_resurrect_the_file(user):
    upload = upload_text(user, "a bittern in the reeds", name="bittern.txt")
    upload_id = upload.pk
    delete_upload(upload, actor=user)

    # given the index worker sees the deletion first (late retries of the upload)
    assert deliver(event_of(upload_id, "file.deleted")) == "done"
    # when the upload event arrives after it
    assert deliver(event_of(upload_id, "file.uploaded")) == "done"

    # then the file stays out of the index
    entry = IndexEntry.objects.get(upload_id=upload_id)
    assert entry.deleted and entry.text == ""
    assert services.search_uploads(query="bittern") == []


def test_deleted_upload_leaves_the_index_and_a_tombstone(user):
    upload = upload_text(user, "a curlew on the mudflats", name="curlew.txt")
    upload_id = upload.pk
    deliver(event_of(upload_id, "file.uploaded"))
    assert services.search_uploads(query="curlew")

    delete_upload(upload, actor=user)
    deliver(event_of(upload_id, "file.deleted"))

    assert services.search_uploads(query="curlew") == []
    assert IndexEntry.objects.filter(upload_id=upload_id, deleted=True).count() == 1


def test_late_upload_after_tombstone_does_not_even_read_the_file(user):
    services.remove_upload(upload_id=99, owner_id=user.pk, name="late.txt")

    assert (
        services.extract_upload_text(
            upload_id=99, storage_name="uploads/none/missing", name="late.txt"
        )
        is None
    )
    assert (
        services.index_upload(
            upload_id=99, owner_id=user.pk, name="late.txt", extraction=Extraction("text")
        )
        is None
    )
    assert IndexEntry.objects.get(upload_id=99).deleted


def test_redelivered_upload_updates_the_entry_in_place(user):
    upload = upload_text(user, "a godwit feeding", name="godwit.txt")
    event = event_of(upload.pk, "file.uploaded")
    deliver(event)
    first = IndexEntry.objects.get(upload_id=upload.pk)

    # given the same event handled again (a forced replay), with better extraction now
    envelope = event.to_envelope()
    handlers.apply_upload(envelope, Extraction("a godwit and a dunlin feeding"))

    entry = IndexEntry.objects.get(upload_id=upload.pk)
    assert entry.pk == first.pk
    assert IndexEntry.objects.filter(upload_id=upload.pk).count() == 1
    assert entry.text == "a godwit and a dunlin feeding"
    assert [hit.upload_id for hit in services.search_uploads(query="dunlin")] == [upload.pk]
    assert [hit.upload_id for hit in services.search_uploads(query="godwit")] == [upload.pk]


def test_duplicate_message_for_a_done_delivery_is_skipped(user):
    upload = upload_text(user, "a redshank", name="redshank.txt")
    event = event_of(upload.pk, "file.uploaded")
    assert deliver(event) == "done"

    assert deliver(event) == "skipped"
    assert IndexEntry.objects.filter(upload_id=upload.pk).count() == 1


@pytest.mark.parametrize(
    ("fixture", "note"),
    [
        ("encrypted.pdf", "PDF is encrypted; indexed by name"),
        ("malformed.pdf", "PDF could not be read ("),
    ],
)
def test_unreadable_pdf_is_done_at_once_and_findable_by_name(user, fixture, note, pdf_extraction):
    with (FIXTURES / fixture).open("rb") as handle:
        upload = create_upload(owner=user, file=File(handle, name=f"ledger-{fixture}"))

    assert deliver(event_of(upload.pk, "file.uploaded")) == "done"

    delivery = Delivery.objects.get(event__aggregate_id=str(upload.pk), consumer="indexing")
    assert delivery.attempts == 1 and delivery.last_error == ""
    entry = IndexEntry.objects.get(upload_id=upload.pk)
    assert entry.text == "" and entry.note.startswith(note)
    assert [hit.upload_id for hit in services.search_uploads(query="ledger")] == [upload.pk]


@pytest.mark.skipif(connection.vendor != "postgresql", reason="tsvector size limit")
def test_text_too_large_for_a_tsvector_is_indexed_by_its_start_on_postgresql(user):
    # Distinct words in a million characters exceed PostgreSQL's 1 MB tsvector limit.
    words = " ".join(f"w{number:x}" for number in range(160_000))[: extraction.MAX_TEXT_CHARS]

    services.index_upload(
        upload_id=7, owner_id=user.pk, name="words.txt", extraction=Extraction(words)
    )

    entry = IndexEntry.objects.get(upload_id=7)
    assert "only the first 300000 characters are searchable" in entry.note
    assert [hit.upload_id for hit in services.search_uploads(query="w10")] == [7]


# ------------------------------------------------------------------------------
# With a real worker
# ------------------------------------------------------------------------------
@pytest.mark.django_db(transaction=True)
def test_uploaded_pdf_is_found_by_search_once_the_worker_indexed_it(live_worker, user):
    with (FIXTURES / "report.pdf").open("rb") as handle:
        upload = create_upload(owner=user, file=File(handle, name="pelican-report.pdf"))

    event = event_of(upload.pk, "file.uploaded")
    assert set(wait_for(lambda: settled(event), what="deliveries").values()) == {"done"}

    hits = services.search_uploads(query="albatross", owner_id=user.pk)
    assert [(hit.upload_id, hit.name) for hit in hits] == [(upload.pk, "pelican-report.pdf")]
    assert "albatross" in hits[0].snippet


@pytest.mark.django_db(transaction=True)
def test_encrypted_pdf_does_not_hold_up_any_consumer(live_worker, user):
    with (FIXTURES / "encrypted.pdf").open("rb") as handle:
        upload = create_upload(owner=user, file=File(handle, name="secret.pdf"))

    event = event_of(upload.pk, "file.uploaded")
    assert wait_for(lambda: settled(event), what="deliveries") == dict.fromkeys(
        upload_consumers(), "done"
    )
    assert IndexEntry.objects.get(upload_id=upload.pk).note == "PDF is encrypted; indexed by name"


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    "hostile",
    [
        # quadratic in html.parser: 1 MB passed the 100 s soft time limit, a retry each time
        "<a" * 500_000,
        # html.parser raised AssertionError, retried as if transient
        "<![" * 1000,
    ],
    ids=["unclosed-tags", "marked-sections"],
)
def test_hostile_html_is_indexed_at_the_first_attempt(live_worker, user, hostile):
    upload = upload_text(user, hostile, name="hostile.html")

    event = event_of(upload.pk, "file.uploaded")
    # well within one soft time limit (100 s) of the indexing task
    states = wait_for(lambda: settled(event), timeout=60, what="deliveries")

    assert states["indexing"] == "done"
    delivery = Delivery.objects.get(event=event, consumer="indexing")
    assert delivery.attempts == 1
    entry = IndexEntry.objects.get(upload_id=upload.pk)
    assert entry.name == "hostile.html" and not entry.deleted
