"""What issue 17's prototypes (measured in bench/README.md) must keep while they save time."""

from __future__ import annotations

from unittest import mock

import pytest
from django.core.files.base import ContentFile
from django.db import connection
from django.test.utils import CaptureQueriesContext

from events.delivery import claim_delivery
from events.models import Delivery, Event
from events.registry import consumers_for, get_consumer
from housekeeping import replay
from tests.processes import wait_for
from uploads.events import FILE_UPLOADED
from uploads.services import create_upload


def _upload(user, n: int = 0) -> Event:
    create_upload(owner=user, file=ContentFile(b"prototype words", name=f"p{n}.txt"))
    return Event.objects.order_by("-occurred_at").first()


@pytest.mark.django_db(transaction=True)
def test_background_publisher_publishes_committed_deliveries_off_the_request(user, settings):
    settings.EVENTS_PUBLISH_IN_BACKGROUND = True
    # The request's own on-commit publish must not run: only the publisher thread's.
    with mock.patch("events.outbox.publish_committed", side_effect=AssertionError("in request")):
        events = [_upload(user, n) for n in range(3)]

    deliveries = Delivery.objects.filter(event__in=events)
    assert deliveries.count() == 3 * len(consumers_for(FILE_UPLOADED))
    try:
        wait_for(
            # Marked sent, or already taken by a worker left running by an earlier test
            # (its claim counts an attempt, and the mark is fenced off such a row).
            lambda: not deliveries.filter(enqueued_at__isnull=True, attempts=0).exists(),
            timeout=10,
            interval=0.05,
            what="the publisher thread to mark every delivery sent",
        )
    finally:
        from events import publisher

        # What happens at exit: the thread publishes what is queued, closes its
        # connection (the test database is dropped after this test) and ends.
        publisher._flush_at_exit()


@pytest.mark.django_db(transaction=True)
def test_claim_on_postgres_reads_the_event_in_its_one_statement_and_leaves_commits_flushed(
    user,
):
    if connection.vendor != "postgresql":
        pytest.skip("the one-statement claim and its asynchronous commit are PostgreSQL's")
    with mock.patch("events.outbox.publish_committed"):
        event = _upload(user)
    delivery = Delivery.objects.filter(event=event).first()
    consumer = get_consumer(delivery.consumer)

    with CaptureQueriesContext(connection) as queries:
        claim = claim_delivery(delivery_id=delivery.pk, consumer=consumer, task_id="t")

    assert len(queries) == 1, [q["sql"] for q in queries]
    assert claim.delivery.event.pk == event.pk and claim.delivery.event.type == FILE_UPLOADED
    assert claim.attempt == 1
    # set_config(..., true) lasted for the claim's own transaction only.
    with connection.cursor() as cursor:
        cursor.execute("SHOW synchronous_commit")
        assert cursor.fetchone()[0] == "on"


@pytest.mark.django_db(transaction=True)
def test_inline_replay_claims_a_consumers_deliveries_in_one_statement(user):
    with mock.patch("events.outbox.publish_committed"):
        events = [_upload(user, n) for n in range(4)]
    Delivery.objects.filter(event__in=events, consumer="audit").delete()
    selection = replay.ReplaySelection(
        consumers=("audit",), event_ids=tuple(event.pk for event in events)
    )

    with CaptureQueriesContext(connection) as queries:
        report = replay.replay_events(selection=selection, mode=replay.Mode.INLINE)

    claims = [q["sql"] for q in queries if "SET state = 'running'" in q["sql"]]
    assert len(claims) == 1, claims
    assert report.tally("audit").outcomes["done"] == 4
    assert Delivery.objects.filter(event__in=events, consumer="audit", state="done").count() == 4
