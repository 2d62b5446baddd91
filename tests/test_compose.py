"""docker-compose.yml is valid and starts only queues and programs the project has.

No Docker engine runs here: ``docker-compose config`` (Debian's ``docker-compose``, which
``bin/setup`` installs) validates and resolves the file without one.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.processes import ROOT

APP_SERVICES = {"migrate", "web", "beat", "flower"}
INFRA_SERVICES = {"postgres", "redis"}
# Exits once migrations are applied: a healthcheck has nothing to watch.
ONE_SHOT = {"migrate"}


def _compose_command() -> list[str] | None:
    binary = shutil.which("docker-compose")
    if binary:
        return [binary]
    docker = shutil.which("docker")
    if (
        docker
        and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0
    ):
        return [docker, "compose"]
    return None


def _parse_yaml(text: str, compose: list[str]) -> dict[str, Any]:
    """PyYAML from .venv if present, else the Python that runs docker-compose (it needs PyYAML)."""
    try:
        import yaml
    except ImportError:
        pass
    else:
        return yaml.safe_load(text)
    shebang = Path(compose[0]).read_text(errors="replace").splitlines()[0]
    python = shebang.removeprefix("#!").strip().split()[0] if shebang.startswith("#!") else ""
    if "python" not in python:
        pytest.skip("no YAML parser: install PyYAML or Debian's docker-compose")
    result = subprocess.run(
        [python, "-c", "import json, sys, yaml; json.dump(yaml.safe_load(sys.stdin), sys.stdout)"],
        input=text,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(result.stdout)


@functools.cache
def _resolved() -> dict[str, Any]:
    compose = _compose_command()
    if compose is None:
        pytest.skip("docker-compose is not installed (bin/setup installs Debian's docker-compose)")
    env = {k: v for k, v in os.environ.items() if not k.startswith("COMPOSE_")}
    env["ENV_FILE"] = ".env.example"
    is_v2 = compose[-1] == "compose"
    result = subprocess.run(
        [*compose, "-f", "docker-compose.yml", "config", *(["--format", "json"] if is_v2 else [])],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, f"docker-compose config failed:\n{result.stderr}"
    return json.loads(result.stdout) if is_v2 else _parse_yaml(result.stdout, compose)


@functools.cache
def _production_workers() -> dict[str, int]:
    """Queue → concurrency of each worker the base settings' registry wants (no test-only
    consumers), the housekeeping ``events`` worker included."""
    code = (
        "import json, django; django.setup(); from config.deployment import worker_specs; "
        "print(json.dumps({s.queue: s.concurrency for s in worker_specs()}))"
    )
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "config.settings.base"}
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, check=True
    )
    return json.loads(result.stdout.splitlines()[-1])


def _production_queues() -> set[str]:
    return set(_production_workers())


def worker_problems(services: dict[str, dict[str, Any]], wanted: dict[str, int]) -> list[str]:
    """How the compose workers differ from the workers the registry wants (queue → processes).

    Each queue needs a ``worker-<queue>`` service running the command line
    ``config.deployment.worker_argv`` builds; no worker may run a queue nobody declared.
    """
    from config.deployment import worker_argv

    problems = []
    workers = {name: s for name, s in services.items() if name.startswith("worker-")}
    for queue, concurrency in wanted.items():
        service = workers.get(f"worker-{queue}")
        if service is None:
            problems.append(f"worker-{queue} is missing")
            continue
        expected = worker_argv(queues=[queue], concurrency=concurrency, hostname=f"{queue}@%h")
        if _program_invocations(service) != [expected]:
            problems.append(f"worker-{queue} runs {service['command']!r}, not {expected}")
    problems += [f"{name} runs no declared queue" for name in workers if name[7:] not in wanted]
    return problems


def _services() -> dict[str, dict[str, Any]]:
    return _resolved()["services"]


def _argv(command: str | list[str]) -> list[str]:
    return shlex.split(command) if isinstance(command, str) else list(command)


def _program_invocations(service: dict[str, Any]) -> list[list[str]]:
    """Each program a service's command runs, with its arguments (through ``sh -c`` too).

    Shell words (``until``, ``do``, ``done``, ``exec``) and output redirections are
    dropped, and so are ``echo`` and ``sleep``.
    """
    argv = _argv(service["command"])
    if argv[:2] != ["sh", "-c"]:
        return [argv]
    invocations = []
    for part in re.split(r";|&&|\|\|", argv[2]):
        words = [w for w in shlex.split(part) if not re.match(r"^\d?>", w)]
        while words and words[0] in ("until", "do", "done", "exec", "then"):
            words = words[1:]
        if words and words[0] not in ("echo", "sleep"):
            invocations.append(words)
    return invocations


def _option(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


def _workers() -> dict[str, dict[str, Any]]:
    return {name: s for name, s in _services().items() if name.startswith("worker-")}


def test_compose_file_is_valid_and_has_every_part_of_the_stack():
    expected = INFRA_SERVICES | APP_SERVICES | {f"worker-{q}" for q in _production_queues()}

    assert set(_services()) == expected


def test_workers_are_the_ones_the_registry_declares_with_their_concurrency():
    assert worker_problems(_services(), _production_workers()) == []


def test_one_worker_per_consumer_queue_and_one_for_events():
    queues = []
    for name, service in _workers().items():
        [argv] = _program_invocations(service)
        assert argv[:4] == ["celery", "-A", "config", "worker"], name
        queue = _option(argv, "-Q")
        assert name == f"worker-{queue}"
        assert _option(argv, "-n") == f"{queue}@%h"
        queues.append(queue)

    assert sorted(queues) == sorted(_production_queues())


def test_every_long_running_service_has_a_healthcheck():
    for name, service in _services().items():
        if name in ONE_SHOT:
            assert service.get("restart") == "no"
            continue
        assert service.get("healthcheck", {}).get("test"), f"{name} has no healthcheck"


def test_workers_are_healthy_when_they_answer_a_ping_under_their_own_name():
    for name, service in _workers().items():
        queue = name.removeprefix("worker-")
        # docker-compose v1 prints the file's escaped $$ as is; v2 prints $.
        check = " ".join(_argv(service["healthcheck"]["test"])).replace("$$", "$")
        assert f"celery -A config inspect ping -d {queue}@$HOSTNAME" in check


def test_every_command_names_a_program_and_entry_point_that_exist():
    from django.core.management import get_commands

    bin_dir = Path(sys.executable).parent
    for name, service in _services().items():
        if name in INFRA_SERVICES:
            continue
        for argv in _program_invocations(service):
            program = argv[0]
            if program == "python":
                assert argv[1] == "manage.py", name
                assert argv[2] in get_commands(), f"{name}: no command {argv[2]!r}"
                continue
            assert (bin_dir / program).is_file(), f"{name}: {program} is not installed"
            if program == "celery":
                assert argv[1:3] == ["-A", "config"], name
                assert argv[3] in {"worker", "beat", "flower", "inspect"}, name
            elif program == "gunicorn":
                module, _, attribute = argv[1].partition(":")
                assert module == "config.wsgi" and attribute == "application", name
                assert (ROOT / "config" / "wsgi.py").is_file()
            else:
                pytest.fail(f"{name}: unexpected program {program}")


def test_app_services_share_one_image_and_one_env():
    app = {name: s for name, s in _services().items() if name in APP_SERVICES or name in _workers()}
    for key in ("image", "build", "environment"):
        values = {json.dumps(service.get(key), sort_keys=True) for service in app.values()}
        assert len(values) == 1, f"app services differ in {key}"
    # and the file says it once: an anchor that each app service merges
    raw = (ROOT / "docker-compose.yml").read_text()
    assert "x-app: &app" in raw
    blocks = re.split(r"^  (?=[\w-]+:\s*$)", raw.split("\nservices:\n", 1)[1], flags=re.M)
    merged = {
        block.split(":", 1)[0] for block in blocks if re.search(r"<<: \*(app|worker)\b", block)
    }
    assert merged == set(app)


def test_redis_persists_with_append_only_file_and_never_evicts():
    command = " ".join(_argv(_services()["redis"]["command"]))

    assert "--appendonly yes" in command
    assert "--maxmemory-policy noeviction" in command


def test_flower_waits_for_a_worker_and_has_basic_auth():
    flower = _services()["flower"]
    invocations = [" ".join(argv) for argv in _program_invocations(flower)]

    assert invocations.index(
        next(i for i in invocations if "inspect ping" in i)
    ) < invocations.index(next(i for i in invocations if "config flower" in i))
    assert flower["environment"]["FLOWER_BASIC_AUTH"]
    assert flower["environment"]["DJANGO_DEBUG"] == "false"


def test_example_env_points_the_app_at_the_compose_services():
    env = _services()["web"]["environment"]

    assert "@postgres:5432/" in env["DATABASE_URL"]
    assert env["CELERY_BROKER_URL"].startswith("redis://redis:6379/")
    assert env["POSTGRES_PASSWORD"] in env["DATABASE_URL"]
    assert "127.0.0.1" in env["DJANGO_ALLOWED_HOSTS"].split(",")  # the web healthcheck


def test_dockerfile_builds_the_app_from_pyproject_on_python_311_slim():
    dockerfile = (ROOT / "Dockerfile").read_text()

    assert re.search(r"^FROM python:3\.11-slim$", dockerfile, flags=re.M)
    assert dockerfile.index("COPY pyproject.toml") < dockerfile.index("RUN pip install .")
    assert re.search(r"^USER app$", dockerfile, flags=re.M)
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".env", ".venv", "var", ".git"} <= set(ignored)
