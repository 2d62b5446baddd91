"""Random interleavings of uploads, deletes, duplicate messages, failures and restarts.

Hypothesis draws a short program of operations and runs it against a real worker and
the relay; then everything must settle with the invariant: every delivery done, no
effect twice (mails, audit entries, probe effects counted), and the index holding
exactly the live uploads' text and nothing of the deleted ones. Bounded examples keep
it to seconds in CI; a failure prints the program that broke it.
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from audit.models import AuditEntry
from events.models import Delivery, Event
from events.outbox import publish_deliveries_now
from indexing.models import IndexEntry
from notifications.models import Notification
from tests.conftest import RelayLoop
from tests.factories import publish_probe, upload_text
from tests.probe.models import ProbeEffect
from tests.processes import CeleryWorker, wait_for
from uploads.models import Upload
from uploads.services import delete_upload

pytestmark = pytest.mark.django_db(transaction=True)

OPERATIONS = st.one_of(
    st.tuples(st.just("upload"), st.integers(0, 10**6)),
    st.tuples(st.just("delete"), st.integers(0, 9)),
    st.tuples(st.just("duplicate"), st.integers(0, 9)),
    st.tuples(st.just("transient"), st.integers(1, 3)),
    st.tuples(st.just("restart"), st.just(0)),
)


@settings(
    # INTERLEAVING_EXAMPLES=50 for a deeper local run.
    max_examples=int(os.environ.get("INTERLEAVING_EXAMPLES", "5")),
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(program=st.lists(OPERATIONS, min_size=1, max_size=6))
def test_any_interleaving_settles_with_every_effect_once_and_the_index_right(
    live_worker: CeleryWorker, user, settings, program: list[tuple[str, int]]
):
    if not live_worker.running:
        live_worker.start()
    known_events = set(Event.objects.values_list("pk", flat=True))
    mails_before = len(list(Path(settings.EMAIL_FILE_PATH).iterdir()))
    live: dict[int, str] = {}
    deleted: set[int] = set()
    relay = RelayLoop().start()
    try:
        for operation, argument in program:
            run(operation, argument, live=live, deleted=deleted, user=user, worker=live_worker)
        new_events = Event.objects.exclude(pk__in=known_events)
        wait_for(
            lambda: (
                not Delivery.objects.filter(event__in=new_events)
                .exclude(state__in=["done", "dead"])
                .exists()
            ),
            timeout=90,
            what=f"{program} to settle",
        )
    finally:
        relay.stop()

    events = list(Event.objects.exclude(pk__in=known_events))
    deliveries = Delivery.objects.filter(event__in=events)
    assert set(deliveries.values_list("state", flat=True)) <= {"done"}, program
    file_events = [e for e in events if e.type.startswith("file.")]
    assert Counter(
        Notification.objects.filter(event_id__in=[e.pk for e in file_events]).values_list(
            "event_id", flat=True
        )
    ) == Counter({e.pk: 1 for e in file_events})
    assert len(list(Path(settings.EMAIL_FILE_PATH).iterdir())) - mails_before == len(file_events)
    assert AuditEntry.objects.filter(event_id__in=[e.pk for e in file_events]).count() == len(
        file_events
    )
    probe_effects = Counter(
        ProbeEffect.objects.filter(event_id__in=[e.pk for e in events]).values_list(
            "event_id", "consumer"
        )
    )
    assert set(probe_effects.values()) <= {1}, program
    for upload_id, text in live.items():
        entry = IndexEntry.objects.get(upload_id=upload_id)
        assert (entry.deleted, entry.text) == (False, text), program
    for upload_id in deleted:
        entry = IndexEntry.objects.get(upload_id=upload_id)
        assert (entry.deleted, entry.text) == (True, ""), program


def run(
    operation: str,
    argument: int,
    *,
    live: dict[int, str],
    deleted: set[int],
    user,
    worker: CeleryWorker,
) -> None:
    """One step of a drawn program."""
    if operation == "upload":
        text = f"word{argument}"
        live[upload_text(user, text).pk] = text
    elif operation == "delete" and live:
        upload_id = sorted(live)[argument % len(live)]
        delete_upload(Upload.objects.get(pk=upload_id), actor=user)
        del live[upload_id]
        deleted.add(upload_id)
    elif operation == "duplicate":
        recent = list(Event.objects.order_by("-recorded_at")[:10])
        if recent:
            event = recent[argument % len(recent)]
            publish_deliveries_now(
                list(Delivery.objects.filter(event=event).select_related("event"))
            )
    elif operation == "transient":
        publish_probe(transient_failures={"probe": argument})
    elif operation == "restart":
        # Between bursts: a message the worker received in the instant before a warm
        # shutdown can stay in Redis's unacked hash (reproduced by the program [upload,
        # restart]). The relay sends its delivery again once that entry is older than a
        # live worker's longest hold (time limit + margin: one to two minutes for these
        # consumers; test_faults_broker pins it with a 3 s hold), longer than this test
        # waits, so it restarts once nothing new waits.
        wait_for(
            lambda: not Delivery.objects.filter(state__in=["pending", "running"]).exists(),
            timeout=60,
            what="the worker to take up what was published before the restart",
        )
        worker.stop()  # warm: running tasks finish, reserved messages go back to Redis
        worker.start()
