"""The events housekeeping publishes: operators' actions, for the audit log.

Only the audit consumer handles them (``audit/consumer.py``), so a bulk redrive is chained
into the audit log with who did it and what it selected (from the admin, or from
``replay_events`` on the command line), and a control (pause, resume,
close a breaker, probe now: ``housekeeping.controls``) with who did it and what came of it.
"""

from __future__ import annotations

from events import EventSchema, schemas

OPERATOR_REDRIVE = "operator.redrive"
OPERATOR_CONTROL = "operator.control"
OPERATOR_REPLAY = "operator.replay"

schemas.declare(
    EventSchema(
        type=OPERATOR_REDRIVE,
        version=1,
        fields={
            # The id of this bulk redrive (also the event's aggregate id).
            "redrive_id": str,
            # The operator's username at the time (the event's actor is their user id).
            "operator": str,
            # The filter as ``housekeeping.redrive.RedriveFilter.to_json`` writes it.
            "filter": dict,
            # The number of deliveries the operator saw and confirmed.
            "confirmed_count": int,
        },
    )
)

schemas.declare(
    EventSchema(
        type=OPERATOR_CONTROL,
        version=1,
        fields={
            # The operator: a username, or the account running the command line. The
            # event's actor is the user id (none from the command line).
            "operator": str,
            # pause, resume, close-breaker or probe-breaker (housekeeping.controls.Control).
            "action": str,
            "consumer": str,
            # The breaker's key ("" for the consumer's own breaker, and for pause/resume).
            "key": str,
            # Why, for a pause ("" otherwise).
            "reason": str,
            # What came of it, as the operator was told ("breaker notifications closed: …").
            "outcome": str,
        },
    )
)

schemas.declare(
    EventSchema(
        type=OPERATOR_REPLAY,
        version=1,
        fields={
            # The operator, as for a control (the account running the command line).
            "operator": str,
            # publish or inline (housekeeping.replay.Mode; a dry run is not recorded).
            "mode": str,
            # What ``replay_events`` selected (``ReplaySelection.to_json``).
            "selection": dict,
            # What came of it, as the operator was told ("12 events read, …"), or how it
            # stopped ("stopped by KeyboardInterrupt after 500 events").
            "outcome": str,
        },
    )
)
