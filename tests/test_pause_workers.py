"""Pause and resume with real workers on a real Redis and the relay running (issue 19).

What operators rely on: a paused consumer holds every delivery while the others carry
on; the pause is in the database, so it outlives a worker restart and every pool (every
host) sees it; resume sends each held mail exactly once. Mail is counted as files the
workers' file backend wrote.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from config.deployment import all_queues
from events.control import pause_consumer, resume_consumer
from events.models import Delivery, DeliveryAttempt
from tests.conftest import RelayLoop
from tests.factories import upload_text
from tests.processes import wait_for

pytestmark = pytest.mark.django_db(transaction=True)


def mails_written(settings) -> int:
    """Mails the workers' file backends wrote. Counted by the line of dashes the backend
    ends each with, not by files: two pool processes forked alike can pick the same file
    name in the same second and append to one file."""
    return sum(
        path.read_text().count("\n" + "-" * 79) for path in Path(settings.EMAIL_FILE_PATH).iterdir()
    )


def others_done(count: int) -> bool:
    """Every consumer but notifications has finished ``count`` uploads' deliveries."""
    return (
        Delivery.objects.filter(consumer__in=["indexing", "audit"], state="done").count()
        == 2 * count
    )


def notifications_parked(count: int) -> bool:
    """``count`` notification deliveries wait with no attempt and a due time: the workers
    took their messages and parked them (the positive sign a pause held). Not by
    ``enqueued_at``: a worker may park a delivery before its publisher marks it sent,
    and then the mark stays until the relay's lost-message count sends it again after
    the resume."""
    parked = Delivery.objects.filter(
        consumer="notifications", state="pending", attempts=0, retry_at__isnull=False
    ).count()
    return parked == count


def notifications_done(count: int) -> bool:
    return Delivery.objects.filter(consumer="notifications", state="done").count() == count


def assert_each_mail_sent_once(settings, count: int) -> None:
    assert mails_written(settings) == count
    deliveries = Delivery.objects.filter(consumer="notifications")
    assert {(d.state, d.attempts) for d in deliveries} == {("done", 1)}
    assert DeliveryAttempt.objects.filter(delivery__consumer="notifications").count() == count


def test_a_paused_consumer_holds_its_mail_while_the_others_run_and_resume_sends_each_once(
    live_worker, running_relay, user, settings
):
    pause_consumer(name="notifications", reason="smtp move")

    for i in range(5):
        upload_text(user, f"file {i}", name=f"f{i}.txt")

    wait_for(lambda: others_done(5), what="indexing and audit to finish")
    wait_for(lambda: notifications_parked(5), what="the workers to park every notification")
    passes = running_relay.passes
    wait_for(lambda: running_relay.passes >= passes + 3, what="three more relay passes")
    assert mails_written(settings) == 0
    assert notifications_parked(5)  # the relay did not send them again

    resume_consumer(name="notifications")

    wait_for(lambda: notifications_done(5), what="the held mail to go out")
    passes = running_relay.passes
    wait_for(lambda: running_relay.passes >= passes + 3, what="three more relay passes")
    assert_each_mail_sent_once(settings, 5)


def test_the_pause_outlives_a_worker_restart(live_worker, running_relay, user, settings):
    pause_consumer(name="notifications")
    upload_text(user, "before", name="before.txt")
    wait_for(lambda: notifications_parked(1), what="the first notification to park")

    live_worker.stop()
    live_worker.start()
    upload_text(user, "after", name="after.txt")

    wait_for(lambda: others_done(2), what="indexing and audit to finish")
    wait_for(lambda: notifications_parked(2), what="the restarted worker to park the second")
    assert mails_written(settings) == 0

    resume_consumer(name="notifications")

    wait_for(lambda: notifications_done(2), what="both mails to go out")
    assert_each_mail_sent_once(settings, 2)


def test_two_worker_pools_see_one_pause(live_worker, make_worker, user, settings):
    # Two hosts' worth of workers: two pools on every queue, the session's own stopped.
    live_worker.stop()
    pools = [make_worker(all_queues(), f"worker-pause-pool-{n}.log") for n in (1, 2)]
    offsets = [pool.log_path.stat().st_size if pool.log_path.exists() else 0 for pool in pools]
    for pool in pools:
        pool.start(concurrency=1)
    try:
        pause_consumer(name="notifications")
        for i in range(12):
            upload_text(user, f"file {i}", name=f"f{i}.txt")

        wait_for(lambda: others_done(12), what="indexing and audit to finish")
        wait_for(lambda: notifications_parked(12), what="both pools to park every notification")
        assert mails_written(settings) == 0
        # each pool took some of the messages, and each refused them
        for pool, offset in zip(pools, offsets, strict=True):
            with pool.log_path.open("rb") as log:
                log.seek(offset)
                assert b"parked: consumer paused" in log.read()

        resume_consumer(name="notifications")
        with RelayLoop():
            wait_for(lambda: notifications_done(12), what="the held mail to go out")
        assert_each_mail_sent_once(settings, 12)
    finally:
        for pool in pools:
            pool.stop()
