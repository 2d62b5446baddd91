"""docker-compose.yml is valid and starts only queues and programs the project has.

Its workers are not listed in it: one ``workers`` service starts every worker the
consumer registry wants (``manage.py consumers --run-workers``), so these checks take
their expectations from the registry. No Docker engine runs here: ``docker-compose config`` (Debian's ``docker-compose``, which
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

from config.deployment import worker_argv
from tests.processes import ROOT

APP_SERVICES = {"migrate", "web", "beat", "flower"}
# Every worker the consumer registry wants, started by one service when it starts.
WORKERS = "workers"
RUN_WORKERS = ["python", "manage.py", "consumers", "--run-workers"]
PING_WORKERS = ["python", "manage.py", "consumers", "--ping-workers", "--timeout", "10"]
INFRA_SERVICES = {"postgres", "redis", "seaweedfs"}
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


def registry_workers(settings_module: str = "config.settings.base") -> dict[str, list[str]]:
    """Queue → command line of each worker the compose ``workers`` service starts under
    ``settings_module`` (``consumers --run-workers`` runs ``worker_commands()``)."""
    code = (
        "import json, django; django.setup(); from config.deployment import worker_commands; "
        "print(json.dumps(worker_commands()))"
    )
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": settings_module}
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, check=True
    )
    return json.loads(result.stdout.splitlines()[-1])


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


def worker_problems(services: dict[str, dict[str, Any]]) -> list[str]:
    """Why the compose file would not run every worker the registry wants, if it would not.

    One ``workers`` service starts them all from the registry when it starts
    (``consumers --run-workers``), so a new consumer needs no edit here; a hand-written
    per-queue worker service is a second list that would drift from the registry.
    """
    problems = []
    workers = services.get(WORKERS)
    if workers is None:
        return [f"no {WORKERS} service"]
    if _program_invocations(workers) != [RUN_WORKERS]:
        problems.append(f"{WORKERS} runs {workers['command']!r}, not {' '.join(RUN_WORKERS)}")
    check = _argv(workers.get("healthcheck", {}).get("test", []))
    if check[1:] != PING_WORKERS or check[0] != "CMD":
        problems.append(f"{WORKERS} healthcheck is {check}, not {' '.join(PING_WORKERS)}")
    problems += [
        f"{name} is a hand-written worker: the registry lists the workers"
        for name in services
        if name.startswith("worker-")
    ]
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


def test_compose_file_is_valid_and_has_every_part_of_the_stack():
    expected = INFRA_SERVICES | APP_SERVICES | {WORKERS}

    assert set(_services()) == expected


def test_one_workers_service_runs_what_the_registry_declares():
    assert worker_problems(_services()) == []


def test_workers_service_starts_one_worker_per_registry_queue_with_its_concurrency():
    # What `consumers --run-workers` starts under the settings the image runs.
    started = registry_workers()

    assert list(started) == list(_production_workers())
    for queue, argv in started.items():
        assert argv == worker_argv(
            queues=[queue],
            concurrency=_production_workers()[queue],
            hostname=f"{queue}@%h",
            program=["celery"],
        )
    assert "events" in started  # relay and housekeeping, declared by no consumer


def test_workers_stop_warm_within_the_grace_period():
    # SIGTERM lets running tasks finish; the grace period outlasts the longest time limit.
    code = (
        "import django; django.setup(); from events.registry import all_consumers; "
        "print(max(c.time_limit for c in all_consumers()))"
    )
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "config.settings.base"}
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, check=True
    )
    longest = int(result.stdout.splitlines()[-1])
    workers = _services()[WORKERS]

    grace = workers["stop_grace_period"]
    seconds = int(grace.removesuffix("s")) if isinstance(grace, str) else int(grace)
    assert seconds > longest
    assert workers["init"] is True  # signals reach the supervisor, orphans are reaped


def test_every_long_running_service_has_a_healthcheck():
    for name, service in _services().items():
        if name in ONE_SHOT:
            assert service.get("restart") == "no"
            continue
        assert service.get("healthcheck", {}).get("test"), f"{name} has no healthcheck"


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
    app = {name: s for name, s in _services().items() if name in APP_SERVICES | {WORKERS}}
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


def _mounts(service: dict[str, Any]) -> set[str]:
    """Where a service's volumes come from: a named volume or a host path."""
    sources = set()
    for volume in service.get("volumes", []):
        source = volume.get("source") if isinstance(volume, dict) else volume.split(":", 1)[0]
        sources.add(str(source))
    return sources


def test_web_and_workers_share_no_volume_and_keep_files_in_the_s3_service():
    services = _services()
    app = {name: s for name, s in services.items() if name in APP_SERVICES | {WORKERS}}
    for name, service in app.items():
        others = set().union(*(_mounts(s) for n, s in services.items() if n != name))
        assert not _mounts(service) & others, f"{name} shares a volume"
    assert _mounts(services["web"]) == set()  # nothing of its own either: files go to S3
    env = services["web"]["environment"]
    assert env["MEDIA_STORAGE"] == "s3"
    assert env["AWS_S3_ENDPOINT_URL"] == "http://seaweedfs:8333"
    assert env["AWS_STORAGE_BUCKET_NAME"]
    assert services["web"]["depends_on"]["seaweedfs"]["condition"] == "service_healthy"
    seaweedfs = services["seaweedfs"]
    assert seaweedfs["image"].startswith("chrislusf/seaweedfs:")
    command = " ".join(_argv(seaweedfs["command"]))
    assert " -s3 " in f" {command} " and "-s3.port=8333" in command
