"""An operator's breaker controls through a real outage: a real SMTP server on loopback,
down, then up, a real worker and the relay running, and a probe interval of an hour, so
nothing but the operator's "probe now" and "close" moves the parked mail.

In-process tests of the same controls (command, admin, audit): ``tests/test_breaker_controls.py``.
"""

from __future__ import annotations

import pytest

from config.deployment import all_queues
from events.control import close_breaker, probe_breaker
from events.models import Breaker, Delivery, DeliveryAttempt
from tests.conftest import RelayLoop
from tests.factories import upload_text
from tests.processes import free_port, wait_for
from tests.test_notifications import SmtpServer, message_id

pytestmark = pytest.mark.django_db(transaction=True)

UPLOADS = 12
PROBE_SECONDS = 3600  # no probe of the relay's own within the test


def notifications() -> list[Delivery]:
    return list(Delivery.objects.filter(consumer="notifications"))


def mail_attempts() -> int:
    return DeliveryAttempt.objects.filter(delivery__consumer="notifications").count()


def test_probe_now_and_close_drain_the_parked_mail_once_each_with_a_real_worker(
    live_worker, make_worker, user, settings
):
    port = free_port()  # nothing listens: the mail server is down
    settings.EVENTS_BREAKER_PROBE_SECONDS = PROBE_SECONDS  # the relay schedules probes
    live_worker.stop()  # its mail goes to files; this test's worker talks SMTP
    worker = make_worker(
        all_queues(),
        "worker-breaker-controls.log",
        {
            "TEST_EMAIL_URL": f"smtp://127.0.0.1:{port}",
            "EVENTS_BREAKER_PROBE_SECONDS": str(PROBE_SECONDS),
        },
    )
    worker.start()
    server = SmtpServer(port)
    try:
        with RelayLoop():
            for i in range(UPLOADS):
                upload_text(user, f"file {i}", name=f"f{i}.txt")
            wait_for(
                lambda: Breaker.objects.filter(
                    consumer="notifications", opened_at__isnull=False
                ).exists(),
                what="the notifications breaker to open",
            )
            wait_for(
                lambda: (
                    Delivery.objects.filter(
                        consumer__in=["indexing", "audit"], state="done"
                    ).count()
                    == 2 * UPLOADS
                ),
                what="indexing and audit to finish during the outage",
            )
            # "Probe now" while the server is still down: one attempt, well before the
            # hour, which fails and leaves the breaker open.
            before = mail_attempts()
            probe_breaker(consumer="notifications")
            wait_for(lambda: mail_attempts() == before + 1, timeout=30, what="the probe")
            wait_for(
                lambda: Breaker.objects.get(consumer="notifications").probe_delivery_id is None,
                what="the failed probe to be recorded",
            )
            assert Breaker.objects.get(consumer="notifications").opened_at is not None
            assert not any(d.state in ("dead", "done") for d in notifications())

            server.start()  # the mail server is back; the breaker's own probe is an hour away
            closed = close_breaker(consumer="notifications")
            assert closed.parked == UPLOADS

            wait_for(
                lambda: all(d.state == "done" for d in notifications()),
                timeout=60,
                what="every mail to go out",
            )
    finally:
        server.stop()
        worker.stop()

    received = server.sink.messages
    assert len(received) == UPLOADS
    assert len({message_id(m) for m in received}) == UPLOADS  # each mail exactly once
    deliveries = notifications()
    assert [d.state for d in deliveries] == ["done"] * UPLOADS
    attempts = sum(d.attempts for d in deliveries)
    assert attempts / UPLOADS <= 2, f"{attempts} attempts for {UPLOADS} deliveries"
    print(f"{attempts} attempts for {UPLOADS} mails ({attempts / UPLOADS:.2f} per delivery)")
