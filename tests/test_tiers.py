"""Test tiers come from fixtures: a test that starts processes cannot land in the fast run."""

from __future__ import annotations

import importlib
import textwrap
from typing import Any

import pytest

from tests.conftest import TIER_FIXTURES, TIERS, process_starting_name, tiers_from_fixtures

# Test modules as others might write them, compiled under a tests.* name so the scan
# follows their helpers as it follows a real test module's.
SAMPLE = textwrap.dedent(
    """
    import functools
    import subprocess
    import sys

    from tests.processes import run_manage, wait_for


    def run_check():
        return subprocess.run([sys.executable, "-c", "pass"])


    @functools.cache
    def cached_check():
        return run_check()


    def test_through_a_helper():
        assert run_check().returncode == 0


    def test_through_a_cached_helper():
        assert cached_check().returncode == 0


    def test_through_a_lambda():
        wait_for(lambda: subprocess.Popen(["true"]))


    def test_through_run_manage():
        run_manage("check")


    def test_pure():
        assert wait_for(lambda: 1) == 1
    """
)


@pytest.fixture
def sample() -> dict[str, Any]:
    namespace: dict[str, Any] = {"__name__": "tests.sample_module"}
    exec(compile(SAMPLE, "tests/sample_module.py", "exec"), namespace)
    return namespace


def test_the_scan_finds_a_process_started_in_a_helper_a_lambda_or_run_manage(sample):
    assert process_starting_name(sample["test_through_a_helper"]) == "subprocess"
    assert process_starting_name(sample["test_through_a_cached_helper"]) == "subprocess"
    assert process_starting_name(sample["test_through_a_lambda"]) == "subprocess"
    assert process_starting_name(sample["test_through_run_manage"]) == "run_manage"
    assert process_starting_name(sample["test_pure"]) is None


def test_tiers_follow_the_fixtures():
    assert tiers_from_fixtures(["db", "user", "_session_worker", "live_worker"]) == {"worker"}
    assert tiers_from_fixtures(["run_manage"]) == {"subprocess"}
    assert tiers_from_fixtures(["make_worker"]) == {"worker", "subprocess"}
    assert tiers_from_fixtures(["system_chromium", "_session_worker"]) == {"browser", "worker"}
    assert tiers_from_fixtures(["db", "client", "settings"]) == set()


def test_every_collected_test_that_uses_a_process_fixture_carries_its_tier(request):
    # The whole session's items: a fixture added to a test moves it out of the fast run.
    for item in request.session.items:
        fixtures = set(getattr(item, "fixturenames", ()))
        for tier, names in TIER_FIXTURES.items():
            if fixtures & names:
                assert item.get_closest_marker(tier), (item.nodeid, tier)


def test_a_test_outside_every_tier_that_starts_a_process_fails(request):
    assert not any(request.node.get_closest_marker(tier) for tier in TIERS)
    # Reached through importlib, as a library would: the scan cannot see it, the guard does.
    run = importlib.import_module("subprocess").run

    with pytest.raises(pytest.fail.Exception, match="is in no process tier"):
        run(["true"])
