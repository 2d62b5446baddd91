"""A real HTTP receiver on 127.0.0.1 for the webhook tests: scripted answers, every request kept.

A threaded ``http.server``: each path answers its scripted ``Reply`` objects in turn,
then 200. A reply can wait before answering, answer a body, or trickle it (or its status
line and headers) one byte at a time, the way a slow or hostile receiver holds a caller.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass(frozen=True)
class Reply:
    """One scripted answer: ``trickle`` seconds between bytes of the body (or, with
    ``trickle_head``, of the whole answer from its status line on)."""

    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    body: bytes = b"ok"
    trickle: float = 0.0
    trickle_head: bool = False


@dataclass(frozen=True)
class Received:
    path: str
    headers: dict[str, str]
    body: bytes


class Receiver:
    """Answers POSTs with scripted replies per path (then 200) and records every request.

    ``cut_off`` lists the paths whose answer the caller stopped reading before its end.
    """

    def __init__(self) -> None:
        self.requests: list[Received] = []
        self.scripts: dict[str, list[Reply]] = {}
        self.defaults: dict[str, Reply] = {}
        self.cut_off: list[str] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                with receiver.lock:
                    headers = {name.lower(): value for name, value in self.headers.items()}
                    receiver.requests.append(Received(self.path, headers, body))
                    script = receiver.scripts.get(self.path) or []
                    reply = script.pop(0) if script else receiver.defaults.get(self.path, Reply())
                time.sleep(reply.delay)
                head = f"HTTP/1.1 {reply.status} X\r\n"
                for name, value in {
                    **reply.headers,
                    "content-length": str(len(reply.body)),
                    "connection": "close",
                }.items():
                    head += f"{name}: {value}\r\n"
                answer = (head + "\r\n").encode() + reply.body
                try:
                    if reply.trickle and reply.trickle_head:
                        self._trickle(answer, reply.trickle)
                    elif reply.trickle:
                        self.wfile.write(answer[: len(answer) - len(reply.body)])
                        self.wfile.flush()
                        self._trickle(reply.body, reply.trickle)
                    else:
                        self.wfile.write(answer)
                except OSError:
                    with receiver.lock:
                        receiver.cut_off.append(self.path)  # the caller gave up reading
                self.close_connection = True

            def _trickle(self, data: bytes, pause: float) -> None:
                for index in range(len(data)):
                    self.wfile.write(data[index : index + 1])
                    self.wfile.flush()
                    time.sleep(pause)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def port(self) -> int:
        return self.server.server_port

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def script(self, path: str, *replies: Reply) -> str:
        """Answer the next requests to ``path`` with ``replies``, then 200; return its URL."""
        self.scripts[path] = list(replies)
        return self.url(path)

    def always(self, path: str, reply: Reply) -> str:
        """Answer every request to ``path`` with ``reply``; return its URL."""
        self.defaults[path] = reply
        return self.url(path)

    def at(self, path: str) -> list[Received]:
        with self.lock:
            return [request for request in self.requests if request.path == path]

    def was_cut_off(self, path: str) -> bool:
        with self.lock:
            return path in self.cut_off

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def deliver_webhooks() -> None:
    """Fan out and make every waiting call once, in-process (the real claim and finish)."""
    from events.testing import drain
    from webhooks.consumer import calls, fan_out

    drain(fan_out.name)
    drain(calls.name)
