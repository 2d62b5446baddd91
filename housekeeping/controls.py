"""Operators' controls, each recorded in the audit log: pause and resume a consumer,
close an open breaker, or have it probe now.

``consumers pause|resume|close-breaker|probe-breaker`` and the admin overview's buttons
both call ``run_control``. It runs the kernel's service (``events.control``) and records
an ``operator.control`` event in one transaction, so every control that took effect is
in the audit log (the audit consumer chains it with the operator, the action, the
consumer and breaker key, the reason and the outcome, as it chains a bulk redrive), and
a refused one (an unknown consumer, a breaker that is not open) records nothing. Both
adapters show the operator the same one-line outcome the audit entry keeps.
"""

from __future__ import annotations

import getpass
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction

from events import record_event
from events.control import (
    BreakerControl,
    close_breaker,
    pause_consumer,
    probe_breaker,
    resume_consumer,
)
from events.models import Event
from housekeeping.events import OPERATOR_CONTROL

AGGREGATE_ID_LENGTH = Event._meta.get_field("aggregate_id").max_length


class Control(StrEnum):
    """What an operator may do to a consumer (the command's subcommands, the buttons' values)."""

    PAUSE = "pause"
    RESUME = "resume"
    CLOSE_BREAKER = "close-breaker"
    PROBE_BREAKER = "probe-breaker"


@dataclass(frozen=True)
class Operator:
    """Who acts: the name the audit log keeps, and their user id (none on the command line)."""

    name: str
    user_id: int | None = None

    @classmethod
    def of_user(cls, user: AbstractBaseUser) -> Operator:
        """A signed-in admin user."""
        return cls(name=user.get_username(), user_id=user.pk)

    @classmethod
    def at_command_line(cls) -> Operator:
        """The account running ``bin/manage``, which has no signed-in user."""
        try:
            account = getpass.getuser()
        except (OSError, KeyError):  # a container user with no passwd entry
            account = "unknown"
        return cls(name=f"{account} (command line)")


@transaction.atomic
def run_control(
    *, action: Control | str, consumer: str, operator: Operator, key: str = "", reason: str = ""
) -> str:
    """Do ``action`` to ``consumer`` (its breaker ``key``), record it, and say what came of it.

    ``LookupError`` for an unknown consumer or a breaker that is not open, ``ValueError``
    for an unknown action or a reason too long: then nothing changed and nothing is recorded.
    """
    try:
        control = _CONTROLS[Control(action)]
    except ValueError:
        raise ValueError(f"unknown action {action!r}") from None
    outcome = control(consumer, key, reason)
    record_event(
        event_type=OPERATOR_CONTROL,
        aggregate_id=consumer[:AGGREGATE_ID_LENGTH],
        actor=operator.user_id,
        payload={
            "operator": operator.name,
            "action": str(action),
            "consumer": consumer,
            "key": key,
            "reason": reason,
            "outcome": outcome,
        },
    )
    return outcome


def _pause(consumer: str, key: str, reason: str) -> str:
    state = pause_consumer(name=consumer, reason=reason)
    since = state.paused_at.isoformat(timespec="seconds") if state.paused_at else ""
    return f"{consumer} paused since {since}: its deliveries wait, uncounted, until resume"


def _resume(consumer: str, key: str, reason: str) -> str:
    result = resume_consumer(name=consumer)
    if not result.was_paused:
        return f"{consumer} was not paused"
    return (
        f"{consumer} resumed: the relay sends its {result.parked} waiting deliveries "
        "on its next pass"
    )


def _close_breaker(consumer: str, key: str, reason: str) -> str:
    done = close_breaker(consumer=consumer, key=key)
    return (
        f"breaker {done.name} closed: the relay sends its {parked(done.parked)} "
        f"on its next pass{_while_paused(done, consumer)}"
    )


def _probe_breaker(consumer: str, key: str, reason: str) -> str:
    done = probe_breaker(consumer=consumer, key=key)
    if not done.parked:
        return (
            f"breaker {done.name}: nothing is parked to probe with; the next delivery "
            f"to arrive is the probe{_while_paused(done, consumer)}"
        )
    return (
        f"breaker {done.name}: the relay sends a probe on its next pass (one of "
        f"{parked(done.parked)}); a success closes the breaker, a failure waits "
        f"{settings.EVENTS_BREAKER_PROBE_SECONDS:g} s for the next{_while_paused(done, consumer)}"
    )


def parked(count: int) -> str:
    """``"1 parked delivery"``, ``"3 parked deliveries"``."""
    return f"{count} parked {'delivery' if count == 1 else 'deliveries'}"


def _while_paused(done: BreakerControl, consumer: str) -> str:
    return f"; {consumer} is paused, so they wait for resume" if done.paused else ""


_CONTROLS: dict[Control, Callable[[str, str, str], str]] = {
    Control.PAUSE: _pause,
    Control.RESUME: _resume,
    Control.CLOSE_BREAKER: _close_breaker,
    Control.PROBE_BREAKER: _probe_breaker,
}
