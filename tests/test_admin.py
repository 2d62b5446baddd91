"""Django admin: uploads, the event log, the delivery ledger and the events overview.

Runs inside the test transaction as a superuser: nothing reaches a worker, and what
the delivery actions publish is recorded instead of sent.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import uuid
from typing import Any

import pytest
from django.contrib.auth.models import Permission, User
from django.core.files.base import ContentFile
from django.db import transaction
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from audit.models import AuditEntry
from events.models import Delivery, DeliveryAttempt, Event
from events.outbox import record_event
from events.registry import all_consumers
from events.testing import drain
from housekeeping.events import OPERATOR_REPLAY
from tests.factories import deletion_consumers, upload_consumers
from tests.probe.handlers import PROBE_EVENT
from uploads.events import FILE_DELETED, FILE_UPLOADED
from uploads.models import Upload

pytestmark = pytest.mark.django_db


def make_upload(owner: User, name: str = "notes.txt", text: str = "hello") -> Upload:
    """An upload with its ``file.uploaded`` event, as ``create_upload`` leaves them.

    ``create_upload`` insists on being the outermost transaction, which a test running
    inside one cannot give it; this writes the same rows.
    """
    data = text.encode()
    with transaction.atomic():
        upload = Upload(
            owner=owner,
            original_name=name,
            size=len(data),
            content_type="text/plain" if name.endswith(".txt") else "text/markdown",
            sha256=hashlib.sha256(data).hexdigest(),
        )
        upload.file.save(name, ContentFile(data), save=False)
        upload.save()
        record_event(
            event_type=FILE_UPLOADED,
            aggregate_id=upload.pk,
            actor=owner.pk,
            payload={
                "upload_id": upload.pk,
                "owner_id": owner.pk,
                "name": name,
                "size": upload.size,
                "storage_name": upload.file.name,
                "content_type": upload.content_type,
                "sha256": upload.sha256,
            },
        )
    return upload


def probe_event() -> Event:
    with transaction.atomic():
        return record_event(
            event_type=PROBE_EVENT, aggregate_id="probe", payload={"key": uuid.uuid4().hex}
        )


def mark(event: Event, consumer: str, state: str, **fields: Any) -> Delivery:
    delivery = Delivery.objects.get(event=event, consumer=consumer)
    for key, value in {"state": state, "attempts": 1, **fields}.items():
        setattr(delivery, key, value)
    delivery.save()
    return delivery


# ------------------------------------------------------------------------------
# Pages load
# ------------------------------------------------------------------------------
def test_every_changelist_and_change_page_loads(admin_client: Client, user):
    upload = make_upload(user)
    event = Event.objects.get(aggregate_id=str(upload.pk))
    delivery = mark(event, "indexing", "dead", last_error="ExtractionError: broken")
    DeliveryAttempt.objects.create(
        delivery=delivery,
        number=1,
        started_at=timezone.now(),
        finished_at=timezone.now(),
        outcome="dead",
        error="ExtractionError: broken",
    )

    pages = [
        reverse("admin:index"),
        reverse("admin:uploads_upload_changelist"),
        reverse("admin:uploads_upload_change", args=[upload.pk]),
        reverse("admin:events_event_changelist"),
        reverse("admin:events_event_change", args=[event.pk]),
        reverse("admin:events_delivery_changelist"),
        reverse("admin:events_delivery_change", args=[delivery.pk]),
        reverse("admin:events_overview"),
        reverse("admin:audit_auditentry_changelist"),
    ]
    for page in pages:
        response = admin_client.get(page)
        assert response.status_code == 200, page


def test_upload_list_shows_owner_size_type_and_each_consumers_state(admin_client, user):
    upload = make_upload(user, "report.txt", "x" * 2048)
    event = Event.objects.get(aggregate_id=str(upload.pk))
    mark(event, "indexing", "dead")
    mark(event, "audit", "done")

    response = admin_client.get(reverse("admin:uploads_upload_changelist"))

    html = response.content.decode()
    assert "report.txt" in html
    assert "alice" in html
    assert "2.0\xa0KB" in html
    assert "text/plain" in html
    assert 'audit: <span style="color: #417690" class="delivery-state-done">done</span>' in html
    assert 'class="delivery-state-dead">dead</span>' in html
    assert 'notifications: <span style="color: #b88a00" class="delivery-state-pending">' in html


def test_upload_list_loads_consumer_states_in_one_query_for_the_page(
    admin_client, user, django_assert_max_num_queries
):
    for i in range(20):
        make_upload(user, f"file{i}.txt")
    admin_client.get(reverse("admin:uploads_upload_changelist"))  # warm the session

    # A query per row would be 20 more.
    with django_assert_max_num_queries(15):
        response = admin_client.get(reverse("admin:uploads_upload_changelist"))

    assert response.content.decode().count("delivery-state-pending") == 20 * len(upload_consumers())


def test_upload_change_page_is_read_only_with_a_delete_link(admin_client, user):
    upload = make_upload(user)

    html = admin_client.get(reverse("admin:uploads_upload_change", args=[upload.pk])).content
    html = html.decode()

    assert reverse("admin:uploads_upload_delete", args=[upload.pk]) in html
    assert 'name="_save"' not in html
    assert "events about this upload" in html


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ({"delivery_state": "dead"}, {"broken.txt", "finished.md"}),
        ({"delivery_state": "open"}, {"fresh.txt", "broken.txt"}),
        ({"delivery_state": "done"}, {"finished.txt"}),
        ({"content_type": "text/markdown"}, {"finished.md"}),
        ({"q": "fresh"}, {"fresh.txt"}),
        ({"q": "bob"}, {"finished.md"}),
    ],
)
def test_upload_filters_and_search(admin_client, user, other_user, query, expected):
    make_upload(user, "fresh.txt")
    broken = make_upload(user, "broken.txt")
    finished = make_upload(user, "finished.txt")
    bobs = make_upload(other_user, "finished.md")
    for upload, states in (
        (broken, {"indexing": "dead"}),
        (finished, dict.fromkeys(upload_consumers(), "done")),
        (bobs, {**dict.fromkeys(upload_consumers(), "done"), "audit": "dead"}),
    ):
        event = Event.objects.get(aggregate_id=str(upload.pk))
        for consumer, state in states.items():
            mark(event, consumer, state)

    response = admin_client.get(reverse("admin:uploads_upload_changelist"), query)

    assert response.status_code == 200
    shown = {upload.original_name for upload in response.context["cl"].result_list}
    assert shown == expected


def test_upload_search_by_id(admin_client, user):
    wanted = make_upload(user, "a.txt")
    make_upload(user, "b.txt")

    response = admin_client.get(reverse("admin:uploads_upload_changelist"), {"q": str(wanted.pk)})

    assert [u.pk for u in response.context["cl"].result_list] == [wanted.pk]


# ------------------------------------------------------------------------------
# Deleting uploads publishes file.deleted
# ------------------------------------------------------------------------------
def test_deleting_one_upload_in_admin_goes_through_the_service(admin_client, user):
    upload = make_upload(user)
    upload_id, storage_name = upload.pk, upload.file.name

    response = admin_client.post(
        reverse("admin:uploads_upload_delete", args=[upload_id]), {"post": "yes"}
    )

    assert response.status_code == 302
    assert not Upload.objects.filter(pk=upload_id).exists()
    deleted = Event.objects.get(type=FILE_DELETED, aggregate_id=str(upload_id))
    admin_user = User.objects.get(username="admin")
    assert deleted.actor == admin_user.pk
    assert deleted.payload == {
        "upload_id": upload_id,
        "owner_id": user.pk,
        "name": "notes.txt",
        "storage_name": storage_name,
    }
    assert set(Delivery.objects.filter(event=deleted).values_list("consumer", flat=True)) == set(
        deletion_consumers()
    )


def test_bulk_delete_action_publishes_file_deleted_for_each_upload(admin_client, user):
    uploads = [make_upload(user, f"f{i}.txt") for i in range(3)]
    keep = make_upload(user, "keep.txt")
    chosen = [u.pk for u in uploads]

    response = admin_client.post(
        reverse("admin:uploads_upload_changelist"),
        {"action": "delete_selected", "_selected_action": chosen, "post": "yes"},
    )

    assert response.status_code == 302
    assert list(Upload.objects.values_list("pk", flat=True)) == [keep.pk]
    deleted = Event.objects.filter(type=FILE_DELETED)
    assert sorted(int(e.aggregate_id) for e in deleted) == sorted(chosen)
    assert Delivery.objects.filter(event__type=FILE_DELETED).count() == 3 * len(
        deletion_consumers()
    )


# ------------------------------------------------------------------------------
# Events and deliveries
# ------------------------------------------------------------------------------
def test_event_admin_is_read_only_and_shows_deliveries_inline(admin_client, user):
    upload = make_upload(user)
    event = Event.objects.get(aggregate_id=str(upload.pk))
    mark(event, "indexing", "dead", last_error="ExtractionError: unreadable PDF")

    response = admin_client.get(reverse("admin:events_event_change", args=[event.pk]))

    html = response.content.decode()
    assert 'name="_save"' not in html
    assert "ExtractionError: unreadable PDF" in html
    for consumer in upload_consumers():
        assert consumer in html
    assert (
        admin_client.post(
            reverse("admin:events_event_delete", args=[event.pk]), {"post": "yes"}
        ).status_code
        == 403
    )
    assert Event.objects.filter(pk=event.pk).exists()
    assert admin_client.get(reverse("admin:events_event_add")).status_code == 403


def test_event_search_finds_events_by_upload_id_and_by_event_id(admin_client, user):
    upload = make_upload(user)
    make_upload(user, "other.txt")
    event = Event.objects.get(aggregate_id=str(upload.pk))
    changelist = reverse("admin:events_event_changelist")

    # The upload page links here with ?q=<upload id>.
    by_upload = admin_client.get(changelist, {"q": str(upload.pk)})
    by_id = admin_client.get(changelist, {"q": str(event.id)})
    by_nothing = admin_client.get(changelist, {"q": "no-such-thing"})

    assert [e.pk for e in by_upload.context["cl"].result_list] == [event.pk]
    assert [e.pk for e in by_id.context["cl"].result_list] == [event.pk]
    assert list(by_nothing.context["cl"].result_list) == []


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ({"consumer": "probe"}, {("probe", "dead"), ("probe", "done")}),
        ({"state__exact": "dead"}, {("probe", "dead"), ("probe_peer", "dead")}),
        ({"consumer": "probe_peer", "state__exact": "dead"}, {("probe_peer", "dead")}),
    ],
)
def test_delivery_filters_by_consumer_and_state(admin_client, query, expected):
    first, second = probe_event(), probe_event()
    mark(first, "probe", "dead")
    mark(first, "probe_peer", "done")
    mark(second, "probe", "done")
    mark(second, "probe_peer", "dead")

    response = admin_client.get(reverse("admin:events_delivery_changelist"), query)

    assert response.status_code == 200
    assert {(d.consumer, d.state) for d in response.context["cl"].result_list} == expected


def test_redeliver_action_resets_dead_resends_stuck_and_skips_done(
    admin_client, published, django_capture_on_commit_callbacks
):
    dead_event, stuck_event = probe_event(), probe_event()
    dead = mark(dead_event, "probe", "dead", last_error="boom")
    done = mark(dead_event, "probe_peer", "done", completed_at=timezone.now())
    stuck = mark(stuck_event, "probe", "pending")

    with django_capture_on_commit_callbacks(execute=True):
        response = admin_client.post(
            reverse("admin:events_delivery_changelist"),
            {"action": "redeliver_selected", "_selected_action": [dead.pk, done.pk, stuck.pk]},
            follow=True,
        )

    assert response.status_code == 200
    assert sorted(published.sent) == sorted([("probe", dead_event.id), ("probe", stuck_event.id)])
    dead.refresh_from_db()
    done.refresh_from_db()
    assert dead.state == "pending" and dead.attempts == 1
    assert done.state == "done"
    message = str(next(iter(response.context["messages"])))
    assert "Re-sent 2 deliveries: 1 dead reset to pending, 1 open re-sent" in message
    assert "skipped 1 already done" in message


def test_redeliver_actions_are_chained_into_the_audit_log_with_the_operator(
    admin_client, admin_user, published, django_capture_on_commit_callbacks
):
    event = probe_event()
    dead = mark(event, "probe", "dead", last_error="boom")
    done = mark(event, "probe_peer", "done", completed_at=timezone.now())

    for action, picked in (("redeliver_selected", dead), ("replay_to_consumer", done)):
        with django_capture_on_commit_callbacks(execute=True):
            admin_client.post(
                reverse("admin:events_delivery_changelist"),
                {"action": action, "_selected_action": [picked.pk]},
            )

    assert [o.outcome for o in drain("audit")] == ["done", "done"]
    redelivered, replayed = AuditEntry.objects.filter(event_type=OPERATOR_REPLAY).order_by(
        "sequence"
    )
    assert (redelivered.actor, redelivered.detail["operator"]) == (admin_user.pk, "admin")
    assert redelivered.detail["selection"] == {
        "deliveries": 1,
        "delivery_ids": [dead.pk],
        "force": False,
    }
    assert redelivered.detail["outcome"].startswith("Re-sent 1 deliveries: 1 dead reset")
    assert replayed.detail["selection"]["force"] is True
    assert replayed.detail["selection"]["delivery_ids"] == [done.pk]


def test_replay_to_consumer_action_resets_done_deliveries_too(
    admin_client, published, django_capture_on_commit_callbacks
):
    event = probe_event()
    done = mark(event, "probe", "done", completed_at=timezone.now())
    untouched = Delivery.objects.get(event=event, consumer="probe_peer")

    with django_capture_on_commit_callbacks(execute=True):
        response = admin_client.post(
            reverse("admin:events_delivery_changelist"),
            {"action": "replay_to_consumer", "_selected_action": [done.pk]},
            follow=True,
        )

    assert published.sent == [("probe", event.id)]
    done.refresh_from_db()
    assert done.state == "pending"
    assert done.completed_at is None
    assert done.attempts == 1
    untouched.refresh_from_db()
    assert untouched.state == "pending"
    assert "1 done reset to pending" in str(next(iter(response.context["messages"])))


def test_delivery_actions_need_the_change_permission(delivery_viewer_client, published):
    client = delivery_viewer_client
    event = probe_event()
    dead = mark(event, "probe", "dead")

    page = client.get(reverse("admin:events_delivery_changelist"))
    response = client.post(
        reverse("admin:events_delivery_changelist"),
        {"action": "redeliver_selected", "_selected_action": [dead.pk]},
    )

    assert page.status_code == 200
    assert "redeliver_selected" not in page.content.decode()
    assert response.status_code in (200, 302)
    dead.refresh_from_db()
    assert dead.state == "dead"
    assert published.sent == []


# ------------------------------------------------------------------------------
# Overview
# ------------------------------------------------------------------------------
def test_overview_shows_event_status_figures_per_consumer_and_the_oldest_pending(
    admin_client, user
):
    first = make_upload(user, "first.txt")
    make_upload(user, "second.txt")
    first_event = Event.objects.get(aggregate_id=str(first.pk))
    mark(first_event, "audit", "done")
    mark(first_event, "indexing", "dead")
    oldest = Delivery.objects.get(event=first_event, consumer="notifications")
    Delivery.objects.filter(pk=oldest.pk).update(
        created_at=timezone.now() - dt.timedelta(minutes=5), enqueued_at=None
    )

    response = admin_client.get(reverse("admin:events_overview"))

    assert response.status_code == 200
    html = response.content.decode()
    assert "Events stored: <strong>2</strong>" in html
    rows = {row["consumer"]: row for row in response.context["rows"]}
    # done, pending, running, retrying, dead
    assert response.context["states"] == ["done", "pending", "running", "retrying", "dead"]
    assert [count for count, _ in rows["audit"]["cells"]] == [1, 1, 0, 0, 0]
    assert [count for count, _ in rows["indexing"]["cells"]] == [0, 1, 0, 0, 1]
    assert [count for count, _ in rows["notifications"]["cells"]] == [0, 2, 0, 0, 0]
    assert rows["notifications"]["oldest_pending"].startswith("5 min")
    assert rows["indexing"]["has_dead"]
    assert "?consumer=indexing&amp;state__exact=dead" in html
    assert response.context["oldest"] == oldest
    assert reverse("admin:events_delivery_change", args=[oldest.pk]) in html
    assert "never enqueued" in html


def test_overview_says_when_nothing_waits(admin_client):
    html = admin_client.get(reverse("admin:events_overview")).content.decode()

    assert "Nothing is waiting" in html


def test_overview_is_linked_from_the_event_and_delivery_lists(admin_client):
    overview = reverse("admin:events_overview")
    for page in ("admin:events_event_changelist", "admin:events_delivery_changelist"):
        assert overview in admin_client.get(reverse(page)).content.decode()


def test_overview_needs_staff(client, user):
    client.force_login(user)

    response = client.get(reverse("admin:events_overview"))

    assert response.status_code == 302
    assert "/admin/login/" in response["Location"]


def test_overview_charts_deliveries_done_per_minute_and_latency_per_consumer(
    admin_client, user, django_assert_max_num_queries
):
    # given: indexing finished three deliveries 5 minutes ago (2 s after their events)
    # and one 30 minutes ago (40 s after), audit one two hours ago (outside the hour)
    now = timezone.now().replace(second=30, microsecond=0)
    events = [Event.objects.get(aggregate_id=str(make_upload(user).pk)) for _ in range(5)]
    for event, (consumer, minutes_ago, latency) in zip(
        events,
        [
            ("indexing", 5, 2),
            ("indexing", 5, 2),
            ("indexing", 5, 2),
            ("indexing", 30, 40),
            ("audit", 120, 1),
        ],
        strict=True,
    ):
        completed = now - dt.timedelta(minutes=minutes_ago)
        Event.objects.filter(pk=event.pk).update(
            occurred_at=completed - dt.timedelta(seconds=latency)
        )
        mark(event, consumer, "done", completed_at=completed)

    # when
    with django_assert_max_num_queries(12):
        response = admin_client.get(reverse("admin:events_overview"))

    # then: one pair of inline SVG charts per consumer, drawn on the server
    html = response.content.decode()
    charts = {chart["consumer"]: chart for chart in response.context["charts"]}
    assert list(charts) == [c.name for c in all_consumers()]
    indexing = charts["indexing"]
    assert indexing["done_total"] == 4
    assert sorted(b["value"] for b in indexing["done"]["bars"] if b["value"]) == [1, 3]
    assert sorted(round(b["value"]) for b in indexing["latency"]["bars"] if b["value"]) == [2, 40]
    assert charts["audit"]["done_total"] == 0
    assert html.count('<svg class="overview-chart"') == 2 * len(charts)
    assert "3 done" in html and "avg 40 s" in html
    assert "<script" not in html.split('id="content-main"')[1]


# ------------------------------------------------------------------------------
# The overview at the top of the admin index
# ------------------------------------------------------------------------------
def test_admin_index_opens_with_the_overview_above_the_models(
    admin_client, user, django_assert_max_num_queries
):
    event = Event.objects.get(aggregate_id=str(make_upload(user).pk))
    mark(event, "indexing", "dead", last_error="boom")
    mark(event, "audit", "done")

    with django_assert_max_num_queries(14):
        response = admin_client.get(reverse("admin:index"))

    html = response.content.decode()
    assert response.status_code == 200
    # the overview comes first, then admin's own list of apps and models
    assert html.index('id="index-events-overview"') < html.index('class="app-uploads')
    rows = {row["consumer"]: row for row in response.context["rows"]}
    assert list(rows) == [c.name for c in all_consumers()]
    assert [count for count, _ in rows["indexing"]["cells"]] == [0, 0, 0, 0, 1]
    assert [count for count, _ in rows["audit"]["cells"]] == [1, 0, 0, 0, 0]
    assert "?consumer=indexing&amp;state__exact=dead" in html
    assert html.count('<svg class="overview-chart"') == 2 * len(rows)
    assert "Events stored: <strong>1</strong>" in html
    assert reverse("admin:events_overview") in html
    assert reverse("admin:events_delivery_bulk_redrive") in html


def test_admin_index_shows_no_overview_to_staff_who_may_not_view_deliveries(client):
    clerk = User.objects.create_user("clerk", password="pw", is_staff=True)
    clerk.user_permissions.add(Permission.objects.get(codename="view_upload"))
    client.force_login(clerk)

    html = client.get(reverse("admin:index")).content.decode()

    assert 'class="app-uploads' in html
    assert 'id="index-events-overview"' not in html
    assert "Deliveries per consumer" not in html


def test_admin_index_overview_offers_bulk_redrive_only_with_the_change_permission(
    delivery_viewer_client,
):
    client = delivery_viewer_client

    html = client.get(reverse("admin:index")).content.decode()

    assert 'id="index-events-overview"' in html
    assert reverse("admin:events_delivery_bulk_redrive") not in html
