"""A database client that goes silent mid-transaction: a worker host cut off by a network
partition, or a process frozen, while its transaction holds row locks.

PostgreSQL learns nothing of a client that stops sending: without a limit of its own the
session stays "idle in transaction", its locks held, until TCP keepalive notices (two
hours by default). Every other attempt that needs those rows (the delivery taken over
after the lease, the next audit entry of the chain) waits that long.
"""

from __future__ import annotations

import os
import sys

import pytest
from django.db import OperationalError, connection, transaction

from events.models import ConsumerState
from tests.processes import ROOT, ChildProcesses, wait_for

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(
        connection.vendor != "postgresql",
        reason="idle_in_transaction_session_timeout is PostgreSQL's",
    ),
]

HOLD_A_LOCK_AND_GO_SILENT = """
import time
from django.db import transaction
from events.models import ConsumerState
with transaction.atomic():
    ConsumerState.objects.select_for_update().get(name="held")
    print("locked", flush=True)
    time.sleep(600)
"""


def row_is_free() -> bool:
    try:
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(
                "SELECT 1 FROM events_consumerstate WHERE name = 'held' FOR UPDATE NOWAIT"
            )
        return True
    except OperationalError:  # could not obtain lock
        return False


def test_a_client_silent_mid_transaction_loses_its_locks_after_the_idle_timeout(
    subprocesses: ChildProcesses, tmp_path
):
    from django.conf import settings

    ConsumerState.objects.create(name="held")
    log = tmp_path / "child.log"
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "config.settings.test",
        "EVENTS_TEST_DATABASE_NAME": str(settings.DATABASES["default"]["NAME"]),
        "DATABASE_IDLE_IN_TRANSACTION_TIMEOUT_SECONDS": "2",
    }
    subprocesses.start(
        [sys.executable, "manage.py", "shell", "-c", HOLD_A_LOCK_AND_GO_SILENT],
        env=env,
        log_path=log,
        cwd=ROOT,
    )
    wait_for(lambda: "locked" in log.read_text(), timeout=60, what="the child holding the lock")
    assert not row_is_free()

    # The child sleeps inside its transaction, sending nothing, for ten minutes.
    wait_for(row_is_free, timeout=60, what="the silent session's lock released by the server")
