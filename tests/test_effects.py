"""``events.effects.claim_effect``: one attempt performs an external effect, on the database clock.

The helper is exercised on a real consumer claim table (``notifications.Notification``,
unique on event and recipient) with the notifications consumer's lease. Claim times are
written relative to the database's clock (``Now()`` in SQL), as the helper reads them.
"""

from __future__ import annotations

import datetime as dt
import logging
import uuid

import pytest
from django.db.models.functions import Now
from django.utils import timezone

from events import effects
from events.delivery import lease_seconds
from events.effects import CLAIMED, claim_effect
from events.exceptions import DeliveryBusy
from notifications.consumer import consumer
from notifications.models import Notification

pytestmark = pytest.mark.django_db

RECIPIENT = "alice@example.com"
FINISHED = (Notification.State.SENT, Notification.State.SKIPPED)


def claim(event_id: uuid.UUID, **fields: object) -> Notification:
    """Claim the mail of ``event_id`` to ``RECIPIENT`` as notifications does."""
    return claim_effect(
        Notification,
        key={"event_id": event_id, "recipient": RECIPIENT},
        consumer=consumer,
        finished=FINISHED,
        fields={"subject": "s", **fields},
        what=f"the mail to {RECIPIENT}",
    )


def left_behind(state: str, *, claimed_seconds_ago: float | None = None) -> Notification:
    """A row an earlier attempt left, claimed that long before the database's now."""
    row = Notification.objects.create(
        event_id=uuid.uuid4(), recipient=RECIPIENT, subject="old", state=state
    )
    if claimed_seconds_ago is not None:
        Notification.objects.filter(pk=row.pk).update(
            claimed_at=Now() - dt.timedelta(seconds=claimed_seconds_ago)
        )
    row.refresh_from_db()
    return row


def test_the_first_claim_inserts_the_row_and_a_duplicate_backs_off():
    event_id = uuid.uuid4()

    first = claim(event_id, message_id="<m@x>")
    with pytest.raises(DeliveryBusy, match="another attempt holds the mail to") as busy:
        claim(event_id)

    assert (first.state, first.subject, first.message_id) == (CLAIMED, "s", "<m@x>")
    assert first.claimed_at is not None and first.claimed_at.tzinfo is not None
    # Looked at again soon, well before the claim could go stale.
    assert 0 < busy.value.retry_after <= effects.BUSY_RETRY_SECONDS
    assert Notification.objects.filter(event_id=event_id).count() == 1
    assert Notification.objects.get(event_id=event_id).claimed_at == first.claimed_at


@pytest.mark.parametrize("state", FINISHED)
def test_a_finished_row_is_returned_untouched_however_old(state):
    row = left_behind(state, claimed_seconds_ago=10 * lease_seconds(consumer))

    found = claim(row.event_id)

    assert (found.pk, found.state, found.subject) == (row.pk, state, "old")
    row_now = Notification.objects.get(pk=row.pk)
    assert (row_now.state, row_now.claimed_at) == (state, row.claimed_at)


def test_a_stale_claim_is_taken_over_once_and_the_next_taker_backs_off(caplog):
    row = left_behind(CLAIMED, claimed_seconds_ago=lease_seconds(consumer) + 5)

    with caplog.at_level(logging.WARNING, logger="events.effects"):
        taken = claim(row.event_id)
    with pytest.raises(DeliveryBusy):
        claim(row.event_id)

    assert (taken.pk, taken.state, taken.subject) == (row.pk, CLAIMED, "s")
    assert taken.claimed_at > row.claimed_at
    assert "took over the stale claim of the mail to" in caplog.text


def test_of_two_attempts_that_both_saw_a_stale_claim_only_one_takes_it(monkeypatch):
    row = left_behind(CLAIMED, claimed_seconds_ago=lease_seconds(consumer) + 5)
    read_row = effects.one_or_none
    rival: list[Notification] = []
    reads = 0

    def read_then_let_the_rival_in(queryset):
        nonlocal reads
        reads += 1
        found = read_row(queryset)
        if reads == 1:  # the late attempt has seen the stale claim; the rival takes it first
            rival.append(claim(row.event_id, subject="rival"))
        return found

    monkeypatch.setattr(effects, "one_or_none", read_then_let_the_rival_in)

    with pytest.raises(DeliveryBusy, match="another attempt holds"):
        claim(row.event_id, subject="late")

    [winner] = rival
    row.refresh_from_db()
    assert (row.state, row.subject, row.claimed_at) == (CLAIMED, "rival", winner.claimed_at)


def test_a_row_to_try_again_is_taken_over_however_fresh():
    row = left_behind(Notification.State.REJECTED, claimed_seconds_ago=1)

    taken = claim(row.event_id, reason="")

    assert (taken.pk, taken.state, taken.reason) == (row.pk, CLAIMED, "")


def test_not_before_keeps_a_row_to_try_again_waiting_until_it_comes():
    row = left_behind(Notification.State.REJECTED, claimed_seconds_ago=1)
    # ``sent_at`` stands in for a "not before" field here: any datetime column will do.
    Notification.objects.filter(pk=row.pk).update(sent_at=Now() + dt.timedelta(seconds=300))

    def claim_not_before() -> Notification:
        return claim_effect(
            Notification,
            key={"event_id": row.event_id, "recipient": RECIPIENT},
            consumer=consumer,
            finished=FINISHED,
            not_before="sent_at",
            what="the call",
        )

    with pytest.raises(DeliveryBusy, match="the call is not due") as busy:
        claim_not_before()
    assert 290 <= busy.value.retry_after <= 300

    Notification.objects.filter(pk=row.pk).update(sent_at=Now() - dt.timedelta(seconds=1))
    assert claim_not_before().state == CLAIMED


def test_a_fresh_claim_is_respected_whatever_the_host_clock_says(monkeypatch):
    # The host's clock is a day ahead of the database's: the claim is 5 s old all the same.
    row = left_behind(CLAIMED, claimed_seconds_ago=5)
    real_now = timezone.now
    monkeypatch.setattr(timezone, "now", lambda: real_now() + dt.timedelta(days=1))

    with pytest.raises(DeliveryBusy, match=r"claimed \d s ago"):
        claim(row.event_id)

    assert Notification.objects.get(pk=row.pk).claimed_at == row.claimed_at


def test_a_claim_is_taken_over_for_the_time_limit_plus_the_lease_margin(settings):
    settings.EVENTS_LEASE_MARGIN_SECONDS = 7
    lease = consumer.time_limit + 7
    younger = left_behind(CLAIMED, claimed_seconds_ago=lease - 2)
    older = left_behind(CLAIMED, claimed_seconds_ago=lease + 2)

    with pytest.raises(DeliveryBusy, match=f"taken over after {lease} s"):
        claim(younger.event_id)
    taken = claim(older.event_id)

    assert (taken.pk, taken.state) == (older.pk, CLAIMED)
    assert taken.claimed_at > older.claimed_at
