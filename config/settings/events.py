"""The event pipeline's settings (``events`` and what operates it)."""

from __future__ import annotations

from config.env import env

# A claim holds a delivery for the consumer's hard time limit plus this margin; after
# that its attempt is dead for sure (killed, out of memory, host lost) and the relay
# sends the delivery again. The margin covers the pool replacing a killed process.
EVENTS_LEASE_MARGIN_SECONDS = env.int("EVENTS_LEASE_MARGIN_SECONDS", default=30)
# How long the relay leaves a delivery to the process that is publishing it (on commit,
# a retry, another relay) before it counts the unconfirmed send as lost.
EVENTS_PUBLISH_GRACE_SECONDS = env.int("EVENTS_PUBLISH_GRACE_SECONDS", default=10)
# Prototype (issue 17): publish after commit from a per-process background thread that
# batches, instead of in the request (events.publisher).
EVENTS_PUBLISH_IN_BACKGROUND = env.bool("EVENTS_PUBLISH_IN_BACKGROUND", default=False)
# Exponential backoff with equal jitter (half fixed, half random) for transient errors.
EVENTS_RETRY_BACKOFF_SECONDS = env.float("EVENTS_RETRY_BACKOFF_SECONDS", default=2.0)
EVENTS_RETRY_BACKOFF_MAX_SECONDS = env.int("EVENTS_RETRY_BACKOFF_MAX_SECONDS", default=600)
EVENTS_RELAY_BATCH_SIZE = env.int("EVENTS_RELAY_BATCH_SIZE", default=500)
# Beat deletes events older than this many days whose deliveries are all done
# (prune_events); 0 keeps everything.
EVENTS_RETENTION_DAYS = env.int("EVENTS_RETENTION_DAYS", default=30)
# Events with a dead delivery (and none still open) are kept this long, for replay, then
# pruned too; never fewer days than EVENTS_RETENTION_DAYS.
EVENTS_DEAD_RETENTION_DAYS = env.int("EVENTS_DEAD_RETENTION_DAYS", default=365)
# How often beat runs the relay (events.relay_outbox): a retry is sent within about this
# long of its due time, since no delay waits in the broker.
EVENTS_RELAY_INTERVAL_SECONDS = env.float("EVENTS_RELAY_INTERVAL_SECONDS", default=1.0)
# A relay dead-letters the open deliveries of a consumer it does not know ("consumer no
# longer registered") only once no process has declared that consumer for this long and
# the deliveries are as old: long enough for a rolling deploy, so that a relay running
# older code never dead-letters a consumer that newer code added.
EVENTS_RETIRED_CONSUMER_GRACE_SECONDS = env.int(
    "EVENTS_RETIRED_CONSUMER_GRACE_SECONDS", default=3600
)
# The circuit breaker (events.breaker): this many consecutive transient failures of a
# consumer (or of one key of it, a webhook endpoint) open it; its deliveries then park
# with no attempt counted, and one probes every EVENTS_BREAKER_PROBE_SECONDS until one
# succeeds and closes it.
EVENTS_BREAKER_FAILURES = env.int("EVENTS_BREAKER_FAILURES", default=5)
EVENTS_BREAKER_PROBE_SECONDS = env.float("EVENTS_BREAKER_PROBE_SECONDS", default=30.0)
# A delivery older than this no longer parks uncounted when it fails under an open
# breaker: its failures count again and it goes dead on its budget, so a message that
# fails for reasons of its own (misreported as the dependency's) cannot probe for ever.
EVENTS_BREAKER_MAX_PARK_SECONDS = env.float("EVENTS_BREAKER_MAX_PARK_SECONDS", default=86400.0)
