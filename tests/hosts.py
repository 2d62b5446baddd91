"""Several hosts on one machine: Linux network namespaces joined by a bridge.

``Topology`` makes one namespace per host, each with its own ``eth0`` (a veth pair
whose other end sits on a bridge in a "switch" namespace) and its own 10.x addresses,
plus a link from this process (the controller, which drives the test and reads the
database) to the same bridge. Nothing is shared but the network: every process gets
its own folder and only the other hosts' addresses.

Faults, all undone by ``heal``:

- ``cut(host)``: the host's switch port goes down, as a pulled cable: packets are
  dropped silently both ways, established connections hang until it comes back;
- ``cut_route(host, address)``: the host can no longer reach one address (a blackhole
  route), everything else still works: a partition between two services only;
- ``delay(ms)``: ``tc netem`` latency on every host's link (``netem_available``);
  ``HostsStack.delay`` falls back to delaying proxies (tests/delay_proxy.py) on every
  link between hosts where the kernel has no netem.

These 10.x addresses exist only inside the namespaces made here (and on the
controller's link while a topology is up); ``down`` removes all of it, processes
first, also when a test failed half way.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tests.delay_proxy import ProxyThread, Route
from tests.processes import ROOT, wait_for

# One /24 for the whole topology; ``unusable_reason`` refuses to start when the machine
# already routes it somewhere.
SUBNET = "10.213.47"
CONTROLLER = f"{SUBNET}.2"


def _run(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, check=check, timeout=60)


def unusable_reason() -> str | None:
    """Why namespaces cannot be made here, in one line; ``None`` when they can."""
    if os.geteuid() != 0:
        return "network namespaces need root (CI runs as root)"
    if shutil.which("ip") is None:
        return "iproute2's ip is not installed"
    probe = f"uprobe{uuid.uuid4().hex[:6]}"
    made = _run("ip", "netns", "add", probe, check=False)
    if made.returncode != 0:
        return f"ip netns add failed: {made.stderr.strip()}"
    _run("ip", "netns", "del", probe, check=False)
    route = _run("ip", "-4", "route", "show", "to", "match", f"{SUBNET}.1", check=False).stdout
    if any(not line.startswith("default") for line in route.splitlines() if line.strip()):
        return f"{SUBNET}.0/24 is already routed on this machine: {route.strip()}"
    return None


def netem_available() -> bool:
    """Whether this kernel has ``tc netem`` (sch_netem), tried on a throwaway veth."""
    if shutil.which("tc") is None:
        return False
    name = f"unt{uuid.uuid4().hex[:6]}"
    if _run(
        "ip", "link", "add", name, "type", "veth", "peer", "name", name + "p", check=False
    ).returncode:
        return False
    try:
        return (
            _run(
                "tc", "qdisc", "add", "dev", name, "root", "netem", "delay", "1ms", check=False
            ).returncode
            == 0
        )
    finally:
        _run("ip", "link", "del", name, check=False)


@dataclass
class Host:
    """One namespace: its name, its addresses (the first is its own) and its folder."""

    name: str
    namespace: str
    addresses: list[str]
    workdir: Path
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def address(self) -> str:
        return self.addresses[0]

    def prefix(self) -> list[str]:
        """The command prefix that runs a program on this host."""
        return ["ip", "netns", "exec", self.namespace]

    def start(
        self, argv: Sequence[str], *, env: dict[str, str], log: str, user: str = ""
    ) -> subprocess.Popen[bytes]:
        """Start ``argv`` on this host (as ``user`` if given), output to ``workdir/log``."""
        command = [*self.prefix(), *(["runuser", "-u", user, "--"] if user else []), *argv]
        with (self.workdir / log).open("ab") as out:
            process = subprocess.Popen(
                command,
                cwd=ROOT,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.processes.append(process)
        return process

    def run(
        self, argv: Sequence[str], *, env: dict[str, str], user: str = "", timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` on this host to its end; fails the test with its output if it fails."""
        command = [*self.prefix(), *(["runuser", "-u", user, "--"] if user else []), *argv]
        result = subprocess.run(
            command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
        )
        if result.returncode != 0:
            raise AssertionError(
                f"{self.name}: {' '.join(argv)} exited {result.returncode}\n"
                f"{result.stdout}\n{result.stderr}"
            )
        return result


class Topology:
    """Hosts on one bridge, and the controller's link to it."""

    def __init__(self, workdir: Path, hosts: dict[str, int]) -> None:
        """``hosts`` maps each host name to how many addresses it gets (services that
        must be cut off one by one get one each)."""
        self.workdir = workdir
        self.tag = uuid.uuid4().hex[:5]
        self.switch = f"u{self.tag}-sw"
        self.controller_link = f"u{self.tag}c"
        self.hosts: dict[str, Host] = {}
        last = 10
        for index, (name, count) in enumerate(hosts.items()):
            addresses = [f"{SUBNET}.{last + i + 1}" for i in range(count)]
            last += 10
            folder = workdir / name
            folder.mkdir(parents=True, exist_ok=True)
            self.hosts[name] = Host(name, f"u{self.tag}-{index}{name[:6]}", addresses, folder)
        self._port: dict[str, str] = {}

    def __getitem__(self, name: str) -> Host:
        return self.hosts[name]

    def up(self) -> None:
        """Make the switch, every host and the controller's link."""
        _run("ip", "netns", "add", self.switch)
        _run("ip", "-n", self.switch, "link", "add", "br0", "type", "bridge")
        _run("ip", "-n", self.switch, "link", "set", "br0", "up")
        for index, host in enumerate(self.hosts.values()):
            _run("ip", "netns", "add", host.namespace)
            _run("ip", "-n", host.namespace, "link", "set", "lo", "up")
            inside, port = f"u{self.tag}h{index}", f"u{self.tag}p{index}"
            _run("ip", "link", "add", inside, "type", "veth", "peer", "name", port)
            _run("ip", "link", "set", inside, "netns", host.namespace)
            _run("ip", "link", "set", port, "netns", self.switch)
            _run("ip", "-n", host.namespace, "link", "set", inside, "name", "eth0")
            for address in host.addresses:
                _run("ip", "-n", host.namespace, "addr", "add", f"{address}/24", "dev", "eth0")
            _run("ip", "-n", host.namespace, "link", "set", "eth0", "up")
            _run("ip", "-n", self.switch, "link", "set", port, "master", "br0", "up")
            self._port[host.name] = port
        port = f"u{self.tag}cp"
        _run("ip", "link", "add", self.controller_link, "type", "veth", "peer", "name", port)
        _run("ip", "link", "set", port, "netns", self.switch)
        _run("ip", "-n", self.switch, "link", "set", port, "master", "br0", "up")
        _run("ip", "addr", "add", f"{CONTROLLER}/24", "dev", self.controller_link)
        _run("ip", "link", "set", self.controller_link, "up")

    def down(self) -> None:
        """Stop every process started on a host, then remove every namespace and link."""
        for host in self.hosts.values():
            for process in host.processes:
                if process.poll() is None:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(process.pid, signal.SIGKILL)
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        process.wait(timeout=10)
            # Anything else still running inside (pool children of a killed worker).
            pids = _run("ip", "netns", "pids", host.namespace, check=False).stdout.split()
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), signal.SIGKILL)
        _run("ip", "link", "del", self.controller_link, check=False)
        for host in self.hosts.values():
            _run("ip", "netns", "del", host.namespace, check=False)
        _run("ip", "netns", "del", self.switch, check=False)

    # -- faults ------------------------------------------------------------------
    def cut(self, host: str) -> None:
        """Pull ``host``'s cable: its switch port goes down."""
        _run("ip", "-n", self.switch, "link", "set", self._port[host], "down")

    def reconnect(self, host: str) -> None:
        _run("ip", "-n", self.switch, "link", "set", self._port[host], "up")

    def cut_route(self, host: str, address: str) -> None:
        """``host`` can no longer reach ``address``; packets to it vanish."""
        _run("ip", "-n", self[host].namespace, "route", "add", "blackhole", f"{address}/32")

    def restore_route(self, host: str, address: str) -> None:
        _run("ip", "-n", self[host].namespace, "route", "del", "blackhole", f"{address}/32")

    def delay(self, milliseconds: int) -> None:
        """``milliseconds`` more on every packet each host sends (``tc netem``)."""
        for host in self.hosts.values():
            _run(
                *host.prefix(),
                "tc",
                "qdisc",
                "replace",
                "dev",
                "eth0",
                "root",
                "netem",
                "delay",
                f"{milliseconds}ms",
            )

    def no_delay(self) -> None:
        for host in self.hosts.values():
            _run(*host.prefix(), "tc", "qdisc", "del", "dev", "eth0", "root", check=False)


def python() -> str:
    """The project's interpreter, for programs run on a host."""
    return sys.executable


def wait_listening(address: str, port: int, *, timeout: float = 60, what: str = "") -> None:
    """Wait until something accepts TCP connections at ``address:port`` (from here)."""
    import socket

    def accepts() -> bool:
        try:
            with socket.create_connection((address, port), timeout=0.5):
                return True
        except OSError:
            return False

    wait_for(accepts, timeout=timeout, interval=0.2, what=what or f"{address}:{port}")


# ------------------------------------------------------------------------------
# The application on several hosts
# ------------------------------------------------------------------------------
class WebhookReceiver:
    """An HTTP endpoint on the controller's address that records every webhook call
    (its ``webhook-id``) and answers 200 after ``delay`` seconds."""

    def __init__(self, delay: float = 0.0) -> None:
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.delay = delay
        self.calls: list[str] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                self.rfile.read(length)
                receiver.calls.append(self.headers.get("webhook-id", ""))
                if receiver.delay:
                    import time

                    time.sleep(receiver.delay)
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer((CONTROLLER, 0), Handler)
        self.url = f"http://{CONTROLLER}:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class HostsStack:
    """The whole application on a ``Topology``: ``services`` (PostgreSQL, Redis and
    SeaweedFS, one address each), ``web`` (gunicorn and beat) and the worker hosts
    (one Celery worker each on every queue). Every process gets the others' addresses
    only, and a folder of its own host."""

    WORKER_HOSTS = ("worker1", "worker2")
    PG_PORT = 5432
    REDIS_PORT = 6379
    WEB_PORT = 8000

    def __init__(self, workdir: Path) -> None:
        self.topology = Topology(
            workdir, {"services": 3, "web": 1, **dict.fromkeys(self.WORKER_HOSTS, 1)}
        )
        services = self.topology["services"]
        self.pg, self.redis, self.s3 = services.addresses
        self.web = self.topology["web"].address
        self.pgdata: Path | None = None
        self.seaweedfs = None
        self.workers: dict[str, subprocess.Popen[bytes]] = {}
        self.web_processes: list[subprocess.Popen[bytes]] = []
        self.token = ""
        self.receiver: WebhookReceiver | None = None
        # While ``delay`` has latency on: "netem" or "userspace proxy"; with the proxies,
        # each service's proxy port (same address as the service) and their processes.
        self.latency = ""
        self._proxy_ports: dict[str, int] = {}
        self._proxies: list[subprocess.Popen[bytes]] = []
        self._receiver_proxy: ProxyThread | None = None

    # -- life cycle ------------------------------------------------------------------
    def up(self) -> None:
        from tests.processes import SeaweedFS

        self.topology.up()
        self._start_postgres()
        services = self.topology["services"]
        services.start(
            [
                "redis-server",
                "--bind",
                self.redis,
                "--port",
                str(self.REDIS_PORT),
                "--save",
                "",
                "--appendonly",
                "no",
                # Reached from other hosts without a password: only inside these namespaces.
                "--protected-mode",
                "no",
                "--dir",
                str(services.workdir),
            ],
            env=dict(os.environ),
            log="redis.log",
        )
        wait_listening(self.redis, self.REDIS_PORT, what="redis on the services host")
        self.seaweedfs = SeaweedFS(
            services.workdir / "seaweedfs", host=self.s3, prefix=services.prefix()
        )
        self.seaweedfs.start()
        services.processes.append(self.seaweedfs.process)
        self.bucket = self.seaweedfs.create_bucket("uploads")
        web = self.topology["web"]
        web.run([python(), "manage.py", "migrate", "--noinput", "-v0"], env=self.app_env("web"))
        self._create_user()
        self._start_web()
        for name in self.WORKER_HOSTS:
            self.start_worker(name)
        wait_listening(self.web, self.WEB_PORT, what="gunicorn on the web host")

    def _start_web(self) -> None:
        """gunicorn and beat on the web host."""
        web = self.topology["web"]
        self.web_processes = [
            web.start(
                [
                    python(),
                    "-m",
                    "gunicorn",
                    "config.wsgi:application",
                    "--bind",
                    f"{self.web}:{self.WEB_PORT}",
                    "--workers",
                    "3",
                    "--timeout",
                    "60",
                ],
                env=self.app_env("web"),
                log="gunicorn.log",
            ),
            web.start(
                [
                    python(),
                    "-m",
                    "celery",
                    "-A",
                    "config",
                    "beat",
                    "-l",
                    "INFO",
                    "-s",
                    str(web.workdir / "celerybeat-schedule"),
                ],
                env=self.app_env("web"),
                log="beat.log",
            ),
        ]

    def down(self) -> None:
        if self._receiver_proxy is not None:
            self._receiver_proxy.stop()
        if self.receiver is not None:
            self.receiver.close()
        if self.pgdata is not None:
            _run(
                "runuser",
                "-u",
                "postgres",
                "--",
                "pg_ctl",
                "-D",
                str(self.pgdata),
                "-m",
                "immediate",
                "stop",
                check=False,
            )
        self.topology.down()
        if self.pgdata is not None:
            shutil.rmtree(self.pgdata, ignore_errors=True)

    def _start_postgres(self) -> None:
        import tempfile

        # PostgreSQL refuses to run as root; the postgres system user must own (and
        # reach) its folder, so it is not under the test's root-only tmp folder.
        self.pgdata = Path(tempfile.mkdtemp(prefix="uploads-hosts-pg-"))
        shutil.chown(self.pgdata, "postgres", "postgres")
        services = self.topology["services"]
        services.run(
            ["initdb", "-D", str(self.pgdata), "-U", "postgres", "-A", "trust", "--no-sync"],
            env=dict(os.environ),
            user="postgres",
        )
        with (self.pgdata / "pg_hba.conf").open("a") as hba:
            hba.write(f"host all all {SUBNET}.0/24 trust\n")
        options = (
            f"-h {self.pg} -p {self.PG_PORT} -k {self.pgdata} -c fsync=off "
            "-c synchronous_commit=off -c max_connections=200"
        )
        services.run(
            [
                "pg_ctl",
                "-D",
                str(self.pgdata),
                "-l",
                str(self.pgdata / "log"),
                "-w",
                "-o",
                options,
                "start",
            ],
            env=dict(os.environ),
            user="postgres",
        )
        with self.connect("postgres") as connection:
            connection.autocommit = True
            connection.execute("CREATE DATABASE uploads")

    def start_worker(self, name: str) -> None:
        """A Celery worker on every queue on host ``name``; returns once it is ready."""
        self._wait_ready(name, self._spawn_worker(name))

    def stop_worker(self, name: str) -> None:
        """Stop the worker of host ``name`` (warm: what it runs finishes first)."""
        process = self.workers.pop(name)
        process.terminate()
        process.wait(timeout=60)

    def _spawn_worker(self, name: str) -> int:
        """Start the worker of host ``name``; where its log stood before (for ``_wait_ready``)."""
        from config.deployment import all_queues, worker_argv

        host = self.topology[name]
        log = host.workdir / "worker.log"
        mark = log.stat().st_size if log.exists() else 0
        self.workers[name] = host.start(
            worker_argv(
                queues=all_queues(),
                concurrency=4,
                hostname=f"{name}@%h",
                program=[python(), "-m", "celery"],
            ),
            env=self.app_env(name),
            log="worker.log",
        )
        return mark

    def _wait_ready(self, name: str, mark: int) -> None:
        log = self.topology[name].workdir / "worker.log"
        wait_for(
            lambda: b" ready." in log.read_bytes()[mark:],
            timeout=60,
            what=f"the worker on {name} (log: {log})",
        )

    def app_env(self, host: str) -> dict[str, str]:
        """The environment of an application process on ``host``: the services'
        addresses (their delaying proxies' while ``delay`` has them on), S3 for files,
        and a folder of the host's own (mail, MEDIA_ROOT)."""
        inherited = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith(
                ("AWS_", "MEDIA_", "DATABASE_", "EVENTS_", "TEST_", "CELERY_", "DJANGO_")
            )
        }
        media = {}
        if self.seaweedfs is not None:
            media = {
                **self.seaweedfs.media_env(self.bucket),
                "AWS_S3_ENDPOINT_URL": f"http://{self.endpoint('s3')}",
            }
        return {
            **inherited,
            "DJANGO_SETTINGS_MODULE": "config.settings.test",
            "DATABASE_URL": (
                f"postgres://postgres@{self.endpoint('pg')}/uploads?connect_timeout=2"
            ),
            "TEST_CELERY_BROKER_URL": f"redis://{self.endpoint('redis')}/0",
            "TEST_VAR_DIR": str(self.topology[host].workdir / "var"),
            "DJANGO_ALLOWED_HOSTS": self.web,
            # Above the longest time limit plus the longest retry (the worker checks).
            "CELERY_VISIBILITY_TIMEOUT": "125",
            # Just above the longest time limit plus the test settings' 1 s lease margin
            # (events.E006): a worker host cut off mid-transaction frees its row locks
            # soon after its leases expire, not after the 180 s default.
            "DATABASE_IDLE_IN_TRANSACTION_TIMEOUT_SECONDS": "122",
            "EVENTS_RELAY_INTERVAL_SECONDS": "1",
            "UPLOAD_RATE_PER_MINUTE": "0",
            **media,
        }

    def _service_ports(self) -> dict[str, tuple[str, int]]:
        """Each service other hosts reach: its address and its own port."""
        ports = {"pg": (self.pg, self.PG_PORT), "redis": (self.redis, self.REDIS_PORT)}
        if self.seaweedfs is not None:
            # The only SeaweedFS port clients use: the S3 gateway reads and writes the
            # volumes itself, on the services host (``links_between_hosts`` shows it).
            ports["s3"] = (self.s3, self.seaweedfs.ports["s3.port"])
        ports["web"] = (self.web, self.WEB_PORT)
        return ports

    def endpoint(self, service: str) -> str:
        """``address:port`` where processes on other hosts reach ``service`` (pg, redis,
        s3, web): its delaying proxy while ``delay`` has proxies on."""
        address, port = self._service_ports()[service]
        return f"{address}:{self._proxy_ports.get(service, port)}"

    # -- latency ----------------------------------------------------------------------
    def delay(self, milliseconds: int, *, method: str = "") -> str:
        """``milliseconds`` more on every packet each host sends, as ``tc netem`` on
        every host's link does (``method="netem"``, the default where the kernel has
        it), or with delaying proxies on every link between hosts (``"userspace
        proxy"``), which restarts the application processes onto them. Returns the
        method used. The equivalence: docs/several-hosts.md ("Latency")."""
        method = method or ("netem" if netem_available() else "userspace proxy")
        if method == "netem":
            self.topology.delay(milliseconds)
        elif method == "userspace proxy":
            self._start_proxies(milliseconds / 1000)
        else:
            raise ValueError(f"unknown latency method {method!r}")
        self.latency = method
        return method

    def no_delay(self) -> None:
        """Back to the links without latency (and the processes on them)."""
        if self.latency == "netem":
            self.topology.no_delay()
        elif self.latency == "userspace proxy":
            self._stop_proxies()
        self.latency = ""

    def _start_proxies(self, seconds: float) -> None:
        # Netem delays what a host sends: a proxy holds the bytes its service's host
        # sends by ``seconds``, and the bytes it receives by ``seconds`` when another
        # host sent them, not when the controller (whose link has no netem) did. Each
        # runs on its service's host and address, so the traffic still crosses the
        # veth links and a route cut to the address still cuts it.
        by_host: dict[str, list[tuple[str, Route]]] = {}
        for service, (address, port) in self._service_ports().items():
            # The controller is the web host's only client (the API calls of a test).
            to_server = 0.0 if service == "web" else seconds
            host = "web" if service == "web" else "services"
            route = Route(address, (address, port), to_server=to_server, to_client=seconds)
            by_host.setdefault(host, []).append((service, route))
        for host_name, routes in by_host.items():
            host = self.topology[host_name]
            ports_file = host.workdir / "delay-proxy-ports.json"
            ports_file.unlink(missing_ok=True)
            argv = [python(), "-m", "tests.delay_proxy", "--ports-file", str(ports_file)]
            for _, route in routes:
                argv += [
                    "--route",
                    route.listen,
                    f"{route.upstream[0]}:{route.upstream[1]}",
                    str(route.to_server * 1000),
                    str(route.to_client * 1000),
                ]
            self._proxies.append(host.start(argv, env=dict(os.environ), log="delay-proxy.log"))
            wait_for(ports_file.exists, timeout=30, what=f"the delaying proxy on {host_name}")
            ports = json.loads(ports_file.read_text())
            self._proxy_ports.update(zip((service for service, _ in routes), ports, strict=True))
        if self.receiver is not None:
            # The workers call the receiver here, on the controller: a proxy in this
            # process, and the endpoint's URL moved onto it.
            address, port = self.receiver.server.server_address[:2]
            self._receiver_proxy = ProxyThread(
                [Route(CONTROLLER, (address, port), to_server=seconds, to_client=0.0)]
            ).start()
            self._set_receiver_url(f"http://{CONTROLLER}:{self._receiver_proxy.ports[0]}/hook")
        self._restart_applications()

    def _stop_proxies(self) -> None:
        self._proxy_ports.clear()
        if self.receiver is not None:
            self._set_receiver_url(self.receiver.url)
        self._restart_applications()
        for process in self._proxies:
            process.kill()
            process.wait(timeout=10)
        self._proxies.clear()
        if self._receiver_proxy is not None:
            self._receiver_proxy.stop()
            self._receiver_proxy = None

    def _set_receiver_url(self, url: str) -> None:
        with self.connect() as connection:
            connection.execute("UPDATE webhooks_endpoint SET url = %s", [url])

    def _restart_applications(self) -> None:
        """gunicorn, beat and every worker stopped (warm: what runs finishes) and started
        again with ``app_env`` as it is now."""
        running = [*self.web_processes, *self.workers.values()]
        for process in running:
            process.terminate()
        for process in running:
            process.wait(timeout=60)
        self._start_web()
        marks = {name: self._spawn_worker(name) for name in self.WORKER_HOSTS}
        for name, mark in marks.items():
            self._wait_ready(name, mark)
        wait_listening(self.web, self.WEB_PORT, what="gunicorn on the web host")

    def links_between_hosts(self) -> tuple[list[str], list[str]]:
        """The TCP connections from an application host to another host, one line each:
        those through a delaying proxy, and those around them (none while ``delay`` has
        proxies on)."""
        proxies = {
            (address, port)
            for service, (address, _) in self._service_ports().items()
            if (port := self._proxy_ports.get(service))
        }
        if self._receiver_proxy is not None:
            proxies.add((CONTROLLER, self._receiver_proxy.ports[0]))
        through: list[str] = []
        around: list[str] = []
        for name in ("web", *self.WORKER_HOSTS):
            host = self.topology[name]
            table = _run(*host.prefix(), "ss", "-tnH", "state", "established").stdout
            for line in table.splitlines():
                local, peer = (
                    (address, int(port))
                    for address, _, port in (field.rpartition(":") for field in line.split()[-2:])
                )
                if not peer[0].startswith(f"{SUBNET}.") or peer[0] in host.addresses:
                    continue  # inside the host
                link = f"{name}: {local[0]}:{local[1]} -> {peer[0]}:{peer[1]}"
                (through if local in proxies or peer in proxies else around).append(link)
        return through, around

    def _create_user(self) -> None:
        web = self.topology["web"]
        env = {**self.app_env("web"), "DJANGO_SUPERUSER_PASSWORD": "correct horse battery"}
        web.run(
            [
                python(),
                "manage.py",
                "createsuperuser",
                "--noinput",
                "--username",
                "alice",
                "--email",
                "alice@example.com",
            ],
            env=env,
        )
        result = web.run([python(), "manage.py", "create_api_token", "alice"], env=env)
        self.token = result.stdout.strip().splitlines()[-1]

    def add_webhook(self, receiver: WebhookReceiver) -> None:
        self.receiver = receiver
        self.topology["web"].run(
            [python(), "manage.py", "add_webhook", "alice", receiver.url], env=self.app_env("web")
        )

    # -- the controller's view ---------------------------------------------------------
    def connect(self, database: str = "uploads"):  # -> psycopg.Connection
        import psycopg

        return psycopg.connect(
            f"postgresql://postgres@{self.pg}:{self.PG_PORT}/{database}", connect_timeout=5
        )

    def sql(self, query: str, *params: object) -> list[tuple]:
        with self.connect() as connection:
            return connection.execute(query, params).fetchall()

    def upload(self, name: str, data: bytes, *, timeout: float = 30) -> tuple[int, int | None]:
        """POST one file to the web host's API: (status, upload id)."""
        import httpx

        response = httpx.post(
            f"http://{self.endpoint('web')}/api/uploads/",
            headers={"Authorization": f"Bearer {self.token}"},
            files={"file": (name, data, "text/plain")},
            timeout=timeout,
        )
        return response.status_code, response.json().get(
            "id"
        ) if response.status_code == 201 else None

    def manage(self, *args: str) -> subprocess.CompletedProcess[str]:
        """``manage.py`` on the web host."""
        return self.topology["web"].run([python(), "manage.py", *args], env=self.app_env("web"))

    def mail_message_ids(self) -> list[str]:
        """The Message-ID of every mail any worker host wrote, duplicates kept."""
        ids = []
        for name in self.WORKER_HOSTS:
            for path in (self.topology[name].workdir / "var" / "mail").glob("*"):
                # One file per SMTP-less "connection", several messages maybe; a long
                # header is folded onto the next line.
                text = path.read_text(errors="replace").replace("\n ", " ")
                ids += re.findall(r"^Message-ID:\s*(\S+)", text, flags=re.M | re.I)
        return ids
