"""Several hosts on one machine (tests/hosts.py): services (PostgreSQL, Redis,
SeaweedFS), a web host and two worker hosts in network namespaces, sharing no disk.

Each scenario ends with every delivery done exactly once, every side effect (mail,
index row, audit entry, webhook call) exactly once, and the audit chain intact.
"""

from __future__ import annotations

import uuid

import pytest

from tests.factories import upload_consumers
from tests.hosts import HostsStack, WebhookReceiver
from tests.processes import wait_for


@pytest.fixture(scope="module")
def stack(hosts_stack: HostsStack) -> HostsStack:
    hosts_stack.add_webhook(WebhookReceiver())
    return hosts_stack


def upload_many(stack: HostsStack, count: int) -> list[int]:
    ids = []
    for _ in range(count):
        word = uuid.uuid4().hex[:10]
        status, upload_id = stack.upload(f"{word}.txt", f"hosts {word}".encode())
        assert status == 201
        ids.append(upload_id)
    return ids


def deliveries_of(stack: HostsStack, upload_ids: list[int]) -> dict[str, int]:
    """State → count of the deliveries of these uploads' events."""
    rows = stack.sql(
        "SELECT d.state, count(*) FROM events_delivery d JOIN events_event e ON e.id = d.event_id"
        " WHERE e.aggregate_id = ANY(%s) GROUP BY d.state",
        [str(i) for i in upload_ids],
    )
    return dict(rows)


def all_done(stack: HostsStack, upload_ids: list[int], expected: int) -> bool:
    return deliveries_of(stack, upload_ids) == {"done": expected}


def assert_effects_exactly_once(stack: HostsStack, upload_ids: list[int]) -> None:
    """Every upload: one done attempt per delivery, one mail, one index row, one audit
    entry and one webhook call, and the audit chain verifies."""
    keys = [str(i) for i in upload_ids]
    events = stack.sql("SELECT id FROM events_event WHERE aggregate_id = ANY(%s)", keys)
    assert len(events) == len(upload_ids)
    done_attempts = stack.sql(
        "SELECT a.delivery_id, count(*) FROM events_deliveryattempt a"
        " JOIN events_delivery d ON d.id = a.delivery_id JOIN events_event e ON e.id = d.event_id"
        " WHERE e.aggregate_id = ANY(%s) AND a.outcome = 'done' GROUP BY a.delivery_id",
        keys,
    )
    assert {count for _, count in done_attempts} == {1}
    sent = stack.sql(
        "SELECT n.state, count(*) FROM notifications_notification n"
        " JOIN events_event e ON e.id = n.event_id WHERE e.aggregate_id = ANY(%s)"
        " GROUP BY n.state",
        keys,
    )
    assert dict(sent) == {"sent": len(upload_ids)}
    message_ids = stack.mail_message_ids()
    assert len(message_ids) == len(set(message_ids))  # no mail twice, on any host
    index_rows = stack.sql(
        "SELECT upload_id, count(*) FROM indexing_indexentry WHERE upload_id = ANY(%s)"
        " GROUP BY upload_id",
        upload_ids,
    )
    assert sorted(index_rows) == sorted((i, 1) for i in upload_ids)
    audit = stack.sql(
        "SELECT count(*) FROM audit_auditentry a JOIN events_event e ON e.id = a.event_id"
        " WHERE e.aggregate_id = ANY(%s)",
        keys,
    )
    assert audit == [(len(upload_ids),)]
    ids = {str(event_id) for (event_id,) in events}
    calls = [call for call in stack.receiver.calls if call in ids]
    assert sorted(calls) == sorted(ids)  # each event's webhook called once
    stack.manage("verify_audit")


def test_uploads_are_delivered_once_across_hosts_that_share_no_disk(stack):
    upload_ids = upload_many(stack, 4)

    expected = 4 * len(upload_consumers())
    wait_for(lambda: all_done(stack, upload_ids, expected), timeout=60, what="deliveries")
    assert_effects_exactly_once(stack, upload_ids)
