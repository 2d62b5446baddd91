"""A worker refuses a configuration that would duplicate or lose work."""

from __future__ import annotations

import dataclasses
import os
import sys

import pytest
from django.core import checks

from config.checks import (
    DeliveryConfig,
    check_delivery_config,
    current_delivery_config,
    delivery_config_problems,
)

# The base settings' defaults: consumers' own limits 60 and 120, CELERY_TASK_TIME_LIMIT.
DEFAULTS = DeliveryConfig(
    visibility_timeout=3600,
    prefetch_multiplier=1,
    lease_margin=30,
    default_time_limit=120,
    consumer_time_limits={
        "notifications.handle_event": 60,
        "indexing.handle_event": 120,
        "audit.handle_event": 120,
    },
    acks_late=True,
    reject_on_worker_lost=True,
    task_acks={"indexing.handle_event": (True, True)},
    serializers={"CELERY_TASK_SERIALIZER": "json", "CELERY_RESULT_SERIALIZER": "json"},
    accept_content=("json",),
)


def codes(config: DeliveryConfig) -> list[str]:
    return [problem.code for problem in delivery_config_problems(config)]


def test_base_defaults_pass():
    assert delivery_config_problems(DEFAULTS) == []


def test_visibility_timeout_must_exceed_what_a_prefetching_process_may_hold():
    # given a process that reserves 2 messages, each of which may run 120 s, and a 30 s
    # margin for the pool to replace a killed process
    config = dataclasses.replace(DEFAULTS, prefetch_multiplier=2, visibility_timeout=270)

    # then the second message could still be waiting or running when Redis hands it out
    [problem] = delivery_config_problems(config)
    assert problem.code == "events.E002"
    assert "visibility timeout (270 s)" in problem.message
    assert "= 270 s" in problem.message
    assert "indexing.handle_event" in problem.message


def test_the_retry_backoff_no_longer_bounds_the_visibility_timeout():
    # Retries wait in the ledger, not as countdown messages in Redis.
    config = dataclasses.replace(DEFAULTS, visibility_timeout=600)

    assert codes(config) == []


def test_a_consumer_time_limit_longer_than_the_visibility_timeout_is_refused():
    config = dataclasses.replace(
        DEFAULTS,
        consumer_time_limits={**DEFAULTS.consumer_time_limits, "slow.handle_event": 7200},
        visibility_timeout=7000,
    )

    assert "events.E002" in codes(config)


def test_the_default_task_time_limit_counts_for_the_visibility_timeout():
    config = dataclasses.replace(DEFAULTS, default_time_limit=3580)  # + 30 s margin > 3600

    assert "events.E002" in codes(config)


def test_tasks_without_any_time_limit_are_refused():
    config = dataclasses.replace(
        DEFAULTS,
        default_time_limit=None,
        consumer_time_limits={"notifications.handle_event": None, "audit.handle_event": 60},
    )

    [problem] = [p for p in delivery_config_problems(config) if p.code == "events.E001"]
    assert "notifications.handle_event" in problem.message
    assert "CELERY_TASK_TIME_LIMIT" in problem.message
    assert "audit.handle_event" not in problem.message


def test_acks_late_without_reject_on_worker_lost_is_refused():
    config = dataclasses.replace(DEFAULTS, reject_on_worker_lost=False)

    [problem] = delivery_config_problems(config)
    assert problem.code == "events.E003"
    assert "CELERY_TASK_ACKS_LATE" in problem.message


def test_a_consumer_task_that_acks_late_without_reject_is_refused():
    config = dataclasses.replace(DEFAULTS, task_acks={"indexing.handle_event": (True, False)})

    [problem] = delivery_config_problems(config)
    assert problem.code == "events.E003"
    assert "indexing.handle_event" in problem.message


def test_early_acks_need_no_reject_on_worker_lost():
    config = dataclasses.replace(
        DEFAULTS, acks_late=False, reject_on_worker_lost=False, task_acks={}
    )

    assert delivery_config_problems(config) == []


@pytest.mark.parametrize(
    "change",
    [
        {"serializers": {"CELERY_TASK_SERIALIZER": "pickle"}},
        {"serializers": {"CELERY_RESULT_SERIALIZER": "PICKLE"}},
        {"accept_content": ("json", "pickle")},
        {"accept_content": ("application/json", "application/x-python-serialize")},
        {"result_accept_content": ("pickle",)},
    ],
)
def test_pickle_anywhere_is_refused(change):
    config = dataclasses.replace(DEFAULTS, **change)

    assert codes(config) == ["events.E004"]


def test_a_lease_without_a_margin_past_the_time_limit_is_refused():
    config = dataclasses.replace(DEFAULTS, lease_margin=0)

    [problem] = delivery_config_problems(config)
    assert problem.code == "events.E005"
    assert "EVENTS_LEASE_MARGIN_SECONDS (0 s)" in problem.message


def test_an_idle_in_transaction_timeout_shorter_than_an_attempt_is_refused():
    # PostgreSQL would end the session of an attempt still inside its time limit
    config = dataclasses.replace(DEFAULTS, idle_in_transaction_timeout=120)

    [problem] = delivery_config_problems(config)
    assert problem.code == "events.E006"
    assert "DATABASE_IDLE_IN_TRANSACTION_TIMEOUT_SECONDS (120 s)" in problem.message
    assert "= 150 s" in problem.message


def test_an_idle_in_transaction_timeout_past_every_attempt_or_off_passes():
    for seconds in (151, 0, None):
        config = dataclasses.replace(DEFAULTS, idle_in_transaction_timeout=seconds)
        assert delivery_config_problems(config) == []


def test_several_problems_are_all_reported():
    config = dataclasses.replace(
        DEFAULTS, visibility_timeout=10, reject_on_worker_lost=False, accept_content=("pickle",)
    )

    assert codes(config) == ["events.E002", "events.E003", "events.E004"]


def test_test_settings_pass_with_their_short_lease_margin(settings):
    # given the test settings: probe consumers' limit 5 s, lease margin 1 s
    config = current_delivery_config()

    assert config.consumer_time_limits["probe.handle_event"] == 5
    assert config.lease_margin == 1
    assert config.task_acks["probe.handle_event"] == (True, True)
    assert delivery_config_problems(config) == []


def test_the_system_check_reports_the_same_problems(settings):
    settings.EVENTS_LEASE_MARGIN_SECONDS = 0

    messages = checks.run_checks(tags=["celery"])

    assert [m.id for m in messages] == ["events.E005"]
    assert messages == check_delivery_config()
    assert all(m.level == checks.ERROR for m in messages)


def _env_without_overrides(**extra: str) -> dict[str, str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("EVENTS_", "CELERY_", "DJANGO_"))
    }
    return {**env, **extra}


def test_manage_py_check_passes_with_the_base_defaults(subprocesses):
    result = subprocesses.run(
        [sys.executable, "manage.py", "check", "--tag", "celery"],
        # The one setting without a default: with debug off, a key of its own.
        env=_env_without_overrides(
            DJANGO_SETTINGS_MODULE="config.settings.base", DJANGO_SECRET_KEY="x" * 50
        ),
    )

    assert result.returncode == 0, result.stderr


def test_worker_with_a_short_visibility_timeout_exits_with_the_reason(redis_server, subprocesses):
    # given a visibility timeout shorter than the test settings' task time limits
    env = _env_without_overrides(
        DJANGO_SETTINGS_MODULE="config.settings.test",
        TEST_CELERY_BROKER_URL=redis_server.url,
        CELERY_VISIBILITY_TIMEOUT="10",
    )

    # when a worker starts
    result = subprocesses.run(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "config",
            "worker",
            "-Q",
            "events",
            "-c",
            "1",
            "--without-mingle",
            "--without-gossip",
            "--without-heartbeat",
        ],
        env=env,
        timeout=120,
    )

    # then it stops before taking any message, and says why
    assert result.returncode != 0
    assert "celery worker refused to start" in result.stderr
    assert "visibility timeout (10 s)" in result.stderr
    assert "[events.E002]" in result.stderr
    assert "ready." not in result.stdout + result.stderr
