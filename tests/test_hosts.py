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


def ledger_dump(stack: HostsStack, upload_ids: list[int]) -> str:
    """The open deliveries of these uploads, one line each, for a failure message."""
    rows = stack.sql(
        "SELECT d.consumer, d.state, d.attempts, d.lease_expires_at < now(), d.enqueued_at,"
        " d.retry_at, left(d.last_error, 120) FROM events_delivery d"
        " JOIN events_event e ON e.id = d.event_id"
        " WHERE e.aggregate_id = ANY(%s) AND d.state <> 'done' ORDER BY d.id",
        [str(i) for i in upload_ids],
    )
    return "\n".join(map(str, rows))


def assert_effects_exactly_once(
    stack: HostsStack, upload_ids: list[int], *, calls_cut_in_flight: int = 0
) -> None:
    """Every upload: one done attempt per delivery, one mail, one index row, one audit
    entry and one webhook call, and the audit chain verifies.

    ``calls_cut_in_flight``: how many webhook calls may have reached the receiver from an
    attempt whose host was cut off before the reply came back. Such a call is made again
    by the attempt that takes over, with the same ``webhook-id`` (receivers deduplicate
    on it, docs/webhooks.md): no sender can know whether a request lost with its link
    was received."""
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
    # The calls are deliveries of their own (webhook_calls), after the fan-out is done.
    wait_for(
        lambda: ids <= set(stack.receiver.calls), timeout=60, what="every event's webhook call"
    )
    calls = [call for call in stack.receiver.calls if call in ids]
    assert set(calls) == ids  # each event's webhook called, under its own webhook-id
    assert len(calls) - len(ids) <= calls_cut_in_flight
    stack.manage("verify_audit")


def test_uploads_are_delivered_once_across_hosts_that_share_no_disk(stack):
    upload_ids = upload_many(stack, 4)

    expected = 4 * len(upload_consumers())
    wait_for(lambda: all_done(stack, upload_ids, expected), timeout=60, what="deliveries")
    assert_effects_exactly_once(stack, upload_ids)


def log_size(stack: HostsStack, host: str) -> int:
    path = stack.topology[host].workdir / "worker.log"
    return path.stat().st_size if path.exists() else 0


def log_since(stack: HostsStack, host: str, mark: int) -> str:
    return (
        (stack.topology[host].workdir / "worker.log").read_bytes()[mark:].decode(errors="replace")
    )


def test_web_host_cut_off_from_redis_still_answers_201_and_everything_is_delivered_later(stack):
    stack.topology.cut_route("web", stack.redis)
    try:
        upload_ids = upload_many(stack, 3)  # each answered 201
        # Nothing can have been published: the deliveries wait in the outbox.
        states = deliveries_of(stack, upload_ids)
        assert states == {"pending": 3 * len(upload_consumers())}
        assert stack.sql(
            "SELECT count(*) FROM events_delivery d JOIN events_event e ON e.id = d.event_id"
            " WHERE e.aggregate_id = ANY(%s) AND d.enqueued_at IS NOT NULL",
            [str(i) for i in upload_ids],
        ) == [(0,)]
    finally:
        stack.topology.restore_route("web", stack.redis)

    expected = 3 * len(upload_consumers())
    wait_for(lambda: all_done(stack, upload_ids, expected), timeout=90, what="deliveries")
    assert_effects_exactly_once(stack, upload_ids)


def test_worker_host_cut_off_from_postgresql_loses_and_acknowledges_nothing(stack):
    # A task whose claim cannot reach the database raises and Celery acknowledges it: the
    # delivery waits with a message out that is in no queue, and the relay's loss count
    # sends it again (engine v3; under engine v2 it stayed pending for ever).
    stack.workers["worker2"].terminate()  # warm stop: worker1 alone takes the messages
    stack.workers["worker2"].wait(timeout=60)
    mark = log_size(stack, "worker1")
    stack.topology.cut_route("worker1", stack.pg)
    try:
        upload_ids = upload_many(stack, 3)
        # worker1 received them (Redis still answers) and could not claim a single one.
        wait_for(
            lambda: log_since(stack, "worker1", mark).count(" received") >= 3,
            timeout=60,
            what="worker1 to receive messages",
        )
        wait_for(
            lambda: (
                "OperationalError" in log_since(stack, "worker1", mark)
                or "timeout expired" in log_since(stack, "worker1", mark)
            ),
            timeout=60,
            what="worker1 to fail reaching PostgreSQL",
        )
    finally:
        stack.topology.restore_route("worker1", stack.pg)
        stack.start_worker("worker2")

    expected = 3 * len(upload_consumers())
    try:
        wait_for(lambda: all_done(stack, upload_ids, expected), timeout=60, what="deliveries")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{ledger_dump(stack, upload_ids)}") from None
    assert_effects_exactly_once(stack, upload_ids)


# Leases last the consumer's time limit (up to 120 s) plus the margin: minutes.
@pytest.mark.timeout(420)
def test_worker_host_cut_off_mid_delivery_is_taken_over_and_its_attempts_cannot_finish(stack):
    # A slow receiver keeps webhook deliveries running when the cable is pulled, and
    # worker2 is stopped until then, so that what runs is worker1's.
    stack.receiver.delay = 1.0  # under the webhook read timeout of the test settings
    stack.stop_worker("worker2")
    mark = log_size(stack, "worker1")
    try:
        upload_ids = upload_many(stack, 4)
        wait_for(
            lambda: (
                "webhooks.handle_event" in log_since(stack, "worker1", mark)
                and stack.sql("SELECT count(*) FROM events_delivery WHERE state = 'running'")[0][0]
            ),
            timeout=60,
            what="worker1 in the middle of deliveries",
        )
        stack.topology.cut("worker1")
        stack.start_worker("worker2")
        expected = 4 * len(upload_consumers())
        # Its leases expire (time limit + margin), the relay sends them again, worker2
        # finishes them; a row lock worker1's transaction held is freed by PostgreSQL's
        # idle-in-transaction timeout, just after the leases.
        try:
            wait_for(lambda: all_done(stack, upload_ids, expected), timeout=260, what="takeover")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{ledger_dump(stack, upload_ids)}") from None
    finally:
        stack.topology.reconnect("worker1")
        stack.receiver.delay = 0.0
        if "worker2" not in stack.workers:  # the test failed before it started again
            stack.start_worker("worker2")
    # worker1 is back and working (a positive sign) before its old attempts are judged.
    later = upload_many(stack, 1)
    wait_for(
        lambda: all_done(stack, later, len(upload_consumers())), timeout=180, what="new upload"
    )
    # The cut-off host held attempts that never finished: claimed (counted), no record.
    # Those of the uploads' events, and of the webhook calls they fanned out (a
    # webhook.call event names its upload event as its message_id).
    keys = [str(i) for i in upload_ids]
    unfinished = dict(
        stack.sql(
            "SELECT d.consumer = 'webhook_calls', count(*) FROM events_delivery d"
            " JOIN events_event e ON e.id = d.event_id"
            " WHERE (e.aggregate_id = ANY(%s) OR e.payload->>'message_id' IN"
            "        (SELECT id::text FROM events_event WHERE aggregate_id = ANY(%s)))"
            " AND d.attempts >"
            " (SELECT count(*) FROM events_deliveryattempt a WHERE a.delivery_id = d.id)"
            " GROUP BY 1",
            keys,
            keys,
        )
    )
    assert sum(unfinished.values()) >= 1, unfinished
    # Each webhook call cut in flight may have reached the receiver, and is made again.
    assert_effects_exactly_once(
        stack, upload_ids + later, calls_cut_in_flight=unfinished.get(True, 0)
    )


def test_with_50_ms_on_every_link_everything_is_delivered_once(stack):
    # tc netem where the kernel has it, else delaying proxies on every link between
    # hosts (docs/several-hosts.md, "Latency").
    method = stack.delay(50)
    try:
        upload_ids = upload_many(stack, 4)
        expected = 4 * len(upload_consumers())
        try:
            wait_for(lambda: all_done(stack, upload_ids, expected), timeout=120, what="deliveries")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{ledger_dump(stack, upload_ids)}") from None
        if method == "userspace proxy":
            # Every connection between hosts goes through a proxy, none around the delay.
            through, around = stack.links_between_hosts()
            assert through
            assert around == []
    finally:
        stack.no_delay()
    assert_effects_exactly_once(stack, upload_ids)
