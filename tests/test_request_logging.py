"""Web request log lines: each carries its own request's correlation id, printed once."""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request

import pytest

from tests.processes import free_port, wait_for


def get(url: str, request_id: str) -> int:
    request = urllib.request.Request(url, headers={"X-Request-ID": request_id})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0


@pytest.mark.timeout(120)
def test_each_request_warning_is_logged_once_with_that_requests_id(tmp_path, subprocesses):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("DJANGO_")}
    env |= {
        "DJANGO_SETTINGS_MODULE": "config.settings.base",
        "DJANGO_DEBUG": "true",
        "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}",
    }
    log_path = tmp_path / "web.log"
    server = subprocesses.start(
        [sys.executable, "manage.py", "runserver", "--noreload", f"127.0.0.1:{port}"],
        env=env,
        log_path=log_path,
    )
    try:
        wait_for(lambda: get(f"http://127.0.0.1:{port}/health/", "warmup"), timeout=60)
        assert get(f"http://127.0.0.1:{port}/no-such-page-1/", "first-request-id") == 404
        assert get(f"http://127.0.0.1:{port}/no-such-page-2/", "second-request-id") == 404
        wait_for(lambda: "no-such-page-2" in log_path.read_text(), timeout=10)
    finally:
        subprocesses.stop(server, timeout=30)

    lines = log_path.read_text().splitlines()
    first = [line for line in lines if "Not Found: /no-such-page-1/" in line]
    second = [line for line in lines if "Not Found: /no-such-page-2/" in line]
    assert len(first) == 1, lines
    assert len(second) == 1, lines
    assert "[first-request-id]" in first[0]
    assert "[second-request-id]" in second[0]
