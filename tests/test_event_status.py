"""``event_status --check``: an alert a cron job or a monitoring agent can run."""

from __future__ import annotations

import datetime as dt

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from events.models import Delivery
from tests.factories import upload_text

pytestmark = pytest.mark.django_db


def check(*args: str) -> int:
    """Run ``event_status --check`` in this process; its exit status."""
    try:
        call_command("event_status", "--check", *args)
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


def test_check_exits_zero_and_says_so_when_every_consumer_is_within_limits(user, capsys):
    upload_text(user)
    Delivery.objects.update(state=Delivery.State.DONE, completed_at=timezone.now())

    assert check() == 0

    assert capsys.readouterr().out.startswith("ok: ")


def test_check_exits_one_with_a_line_per_dead_or_long_waiting_consumer(user, capsys):
    for _ in range(3):
        upload_text(user)
    Delivery.objects.filter(consumer="notifications").update(state=Delivery.State.DONE)
    Delivery.objects.filter(consumer="indexing").update(state=Delivery.State.DEAD)
    Delivery.objects.filter(consumer="audit").update(
        created_at=timezone.now() - dt.timedelta(seconds=912)
    )
    # The probe consumers of the test settings handle no file events: nothing to report.

    assert check() == 1

    lines = capsys.readouterr().out.splitlines()
    assert "indexing: 3 dead" in lines
    assert any(line.startswith("audit: oldest waiting 91") for line in lines)
    assert not [line for line in lines if line.startswith("notifications")]


def test_check_limits_are_adjustable(user, capsys):
    upload_text(user)
    Delivery.objects.filter(consumer="indexing").update(state=Delivery.State.DEAD)
    Delivery.objects.exclude(consumer="indexing").update(
        created_at=timezone.now() - dt.timedelta(seconds=400)
    )

    assert check() == 1
    assert check("--max-dead", "1", "--max-waiting-seconds", "600") == 0
    assert check("--max-dead", "1") == 1
    out = capsys.readouterr().out
    assert "indexing: 1 dead" in out


@pytest.mark.parametrize(
    "args",
    [
        ["--max-dead", "-1"],
        ["--max-dead", "many"],
        ["--max-waiting-seconds", "soon"],
        ["--max-waiting-seconds", "-5"],
    ],
)
def test_check_refuses_bad_limits_with_a_clear_error(args):
    with pytest.raises(CommandError, match="--max-"):
        call_command("event_status", "--check", *args)


def test_limits_without_check_are_refused():
    with pytest.raises(CommandError, match="--check"):
        call_command("event_status", "--max-dead", "2")
