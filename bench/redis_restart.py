"""Black-box check: Redis restarted empty while 50 messages wait on every consumer queue.

    .venv/bin/python bench/redis_restart.py [ROOT] [--runs 10] [--timeout 330]
        [--max-wait-before-restart 6] [--max-down 6] [--env NAME=VALUE]...

Each run builds the whole stack the way ``bin/start`` does, as plain subprocesses of the
checkout ``ROOT`` (default: this one; any checkout with a ``.venv`` works, so an older
engine can be measured the same way): a private ``redis-server`` on a free port without
persistence, a scratch SQLite database, media and mail folder, the ``events`` worker and
beat (relay every ``EVENTS_RELAY_INTERVAL_SECONDS=2``) running throughout, the consumer
workers from ``manage.py consumers --procfile`` stopped. It then uploads 50 files
(``upload_file``), so 50 messages wait on each consumer queue; waits a random moment
(beat ticks fall anywhere); stops Redis with ``SHUTDOWN NOSAVE``; keeps it down a random
while; starts it again empty on the same port; starts the consumer workers; and polls
``event_status --json`` until every delivery is done or ``--timeout`` seconds have passed.

Prints one JSON line per run (seconds from the restart to the first and to the last
delivery done, mails written, which must be exactly 50) and a summary. A run that does
not finish keeps its folder (logs of every process, ``celery inspect active_queues``,
Redis keys and queue lengths) for diagnosis; finished runs are removed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from redis import Redis as RedisClient  # noqa: E402

from tests.processes import RedisServer  # noqa: E402

UPLOADS = 50


class Redis(RedisServer):
    """The suite's private redis-server (no persistence, restartable on the same port)."""

    def client(self) -> RedisClient:
        return RedisClient.from_url(self.url, decode_responses=True)

    def shutdown(self) -> None:
        """``SHUTDOWN NOSAVE``: everything it held is gone."""
        if self.process is not None and self.process.poll() is None:
            self.client().shutdown(nosave=True)
        self.stop()


class Process:
    """One Procfile line, run in its own process group so its pool children stop with it."""

    def __init__(self, name: str, command: str, *, root: Path, env: dict[str, str], logs: Path):
        with (logs / f"{name}.log").open("ab") as log:
            self.process = subprocess.Popen(
                ["bash", "-c", f"exec {command}"],
                cwd=root,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=20)
        # Pool processes a stuck main process left behind.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)


class Stack:
    """The checkout's commands against one scratch folder and one private Redis."""

    def __init__(self, root: Path, workdir: Path, redis: Redis, extra: dict[str, str]) -> None:
        self.root = root
        self.workdir = workdir
        self.env = {
            **os.environ,
            "DJANGO_DEBUG": "true",
            "DJANGO_SECRET_KEY": "bench-redis-restart-" + "k" * 40,
            "DATABASE_URL": f"sqlite:///{workdir}/db.sqlite3",
            "MEDIA_ROOT": str(workdir / "media"),
            "EMAIL_URL": f"filemail:///{workdir}/mail",
            "CELERY_BROKER_URL": redis.url,
            "EVENTS_RELAY_INTERVAL_SECONDS": "2",
            "PYTHONUNBUFFERED": "1",
            **extra,
        }
        self.env.pop("DJANGO_SETTINGS_MODULE", None)
        self.processes: list[Process] = []

    def manage(self, *args: str, timeout: float = 300) -> str:
        command = [".venv/bin/python", "manage.py", *args]
        done = subprocess.run(
            command, cwd=self.root, env=self.env, capture_output=True, text=True, timeout=timeout
        )
        if done.returncode:
            raise RuntimeError(f"manage.py {' '.join(args)} failed: {done.stderr[-2000:]}")
        return done.stdout

    def procfile(self) -> dict[str, str]:
        """Process name → command, from the registry (or an older checkout's Procfile)."""
        static = self.root / "Procfile"
        text = static.read_text() if static.exists() else self.manage("consumers", "--procfile")
        return dict(line.split(": ", 1) for line in text.splitlines() if ": " in line)

    def start(self, name: str, command: str) -> None:
        process = Process(name, command, root=self.root, env=self.env, logs=self.workdir)
        self.processes.append(process)

    def stop(self) -> None:
        for process in self.processes:
            process.stop()

    def done_counts(self) -> dict[str, int]:
        status = json.loads(self.manage("event_status", "--json"))
        return {name: counts["done"] for name, counts in status["consumers"].items()}

    def mails(self) -> int:
        folder = self.workdir / "mail"
        if not folder.exists():
            return 0
        return sum(
            path.read_text(errors="replace").count("\nMessage-ID:") for path in folder.iterdir()
        )


def one_run(args: argparse.Namespace, extra: dict[str, str], number: int) -> dict[str, object]:
    """Upload with consumers down, lose Redis, start consumers, time the deliveries."""
    workdir = Path(tempfile.mkdtemp(prefix=f"redis-restart-{number}-"))
    redis = Redis(workdir / "redis")
    redis.start()
    stack = Stack(args.root, workdir, redis, extra)
    result: dict[str, object] = {"run": number}
    try:
        stack.manage("migrate", "--noinput", "-v0")
        stack.manage(
            "shell",
            "-c",
            "from django.contrib.auth.models import User; User.objects.create_user('bench', 'bench@example.com')",
        )
        procfile = stack.procfile()
        consumers = [
            name for name, cmd in procfile.items() if " worker " in cmd and name != "events"
        ]
        stack.start("events", procfile["events"])
        stack.start("beat", f"{procfile['beat']} -s {workdir}/celerybeat-schedule")
        paths = []
        for i in range(UPLOADS):
            path = workdir / f"upload-{i}.txt"
            path.write_text(f"upload number {i}\n")
            paths.append(str(path))
        stack.manage("upload_file", *paths, "--owner", "bench")
        result["queued_before"] = {queue: redis.client().llen(queue) for queue in consumers}

        wait = random.uniform(0, args.max_wait_before_restart)
        time.sleep(wait)
        redis.shutdown()
        down = random.uniform(0.2, args.max_down)
        time.sleep(down)
        redis.start()
        restarted = time.monotonic()
        result.update(wait_s=round(wait, 1), down_s=round(down, 1))
        for name in consumers:
            stack.start(name, procfile[name])

        first = last = None
        done: dict[str, int] = {}
        while time.monotonic() - restarted < args.timeout:
            try:
                done = stack.done_counts()
            except RuntimeError as exc:  # a locked SQLite database, now and then
                print(exc, file=sys.stderr)
            elapsed = round(time.monotonic() - restarted)
            if first is None and any(done.values()):
                first = elapsed
            if done and all(count >= UPLOADS for count in done.values()):
                last = elapsed
                break
            time.sleep(3)
        result.update(first_done_s=first, all_done_s=last, done=done, mails=stack.mails())
        if last is None:
            result["diagnosis"] = diagnose(stack, redis, [*consumers, "events"])
    finally:
        stack.stop()
        redis.shutdown()
    if result.get("all_done_s") is not None and result["mails"] == UPLOADS:
        shutil.rmtree(workdir, ignore_errors=True)
    else:
        result["kept"] = str(workdir)
    return result


def diagnose(stack: Stack, redis: Redis, queues: list[str]) -> dict[str, object]:
    """What Redis holds and which queues the workers say they consume, for a stuck run."""
    inspect = subprocess.run(
        [".venv/bin/celery", "-A", "config", "inspect", "active_queues", "-t", "3"],
        cwd=stack.root,
        env=stack.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    (stack.workdir / "inspect-active-queues.txt").write_text(inspect.stdout + inspect.stderr)
    client = redis.client()
    return {
        "keys": sorted(client.keys("*")),
        "llen": {queue: client.llen(queue) for queue in queues},
        "unacked": client.hlen("unacked"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("root", nargs="?", type=Path, default=ROOT, help="checkout to run")
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--timeout", type=float, default=330, help="seconds after the restart")
    parser.add_argument("--max-wait-before-restart", type=float, default=6)
    parser.add_argument("--max-down", type=float, default=6, help="longest Redis downtime, s")
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE")
    args = parser.parse_args()
    args.root = args.root.resolve()
    extra = dict(item.split("=", 1) for item in args.env)
    outcomes = {"all": 0, "some": 0, "none": 0, "mails not 50": 0}
    for number in range(args.runs):
        result = one_run(args, extra, number)
        print(json.dumps(result), flush=True)
        done = result["done"] if isinstance(result["done"], dict) else {}
        if result["all_done_s"] is not None:
            outcomes["all"] += 1
        elif any(done.values()):
            outcomes["some"] += 1
        else:
            outcomes["none"] += 1
        if result["mails"] != UPLOADS:
            outcomes["mails not 50"] += 1
    print("runs:", args.runs, ", ".join(f"{name}: {count}" for name, count in outcomes.items()))


if __name__ == "__main__":
    main()
