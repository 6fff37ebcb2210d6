"""A fault-injecting HTTP proxy in front of a real server on localhost (the S3 endpoint, the test PACS): requests
pass through to the server unless a :class:`Fault` matches, in which case the proxy answers with an error instead
(an S3 error body, and headers such as Retry-After), as an overloaded or failing server would, or holds the request
for a while first (a slow answer). A :class:`Trigger` runs an action on the real server when a request arrives (kill
it, delete what is about to be read). A server that no longer answers is passed on as one: the client's connection
is closed without an answer. Clients reach it through its ``endpoint`` (``AWS_ENDPOINT_URL``, a PACS's URL); it
records every request and what it injected.

It is not a mock: every answer it does not replace is the real server's, and the faults are what an HTTP client meets
in front of any real server (a status, a delay, a dropped connection), so the client code under test runs its real
retries, back-off and error paths against a real protocol implementation."""

from __future__ import annotations

import dataclasses
import http.client
import http.server
import re
import threading
import time
import urllib.parse
from typing import Callable

ERROR_BODY = ('<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code><Message>injected by the test '
              'proxy</Message><RequestId>fault-injection</RequestId></Error>')


@dataclasses.dataclass
class Fault:
    """Requests whose ``/bucket/key?query`` matches ``path`` (and ``method``, and being a server-side copy when
    ``copies``) fail with ``status``/``code``: the first ``times`` requests of each path, or every one when
    ``times`` is None. With ``after``, the first ``after`` matching requests pass and the fault arms at the next
    one; once armed, ``scope`` (when given) widens what fails to every request matching it (a bucket that
    disappears mid-run). ``delay``: seconds the request is held before it fails, or, with ``status`` None, before
    it is passed on; ``headers``: added to the error answer."""

    path: str
    status: int | None
    code: str = ""
    method: str | None = None
    times: int | None = 1
    after: int = 0
    copies: bool = False
    scope: str | None = None
    delay: float = 0.0
    headers: tuple[tuple[str, str], ...] = ()
    passed: int = 0
    armed: bool = False
    injected: int = 0
    failures: dict = dataclasses.field(default_factory=dict)

    def matches(self, method: str, path: str, headers) -> bool:
        return ((self.method is None or method == self.method) and re.search(self.path, path) is not None
                and (not self.copies or "x-amz-copy-source" in headers))

    def decide(self, method: str, path: str, headers) -> bool:
        """Whether this request fails; updates the fault's counts."""
        if self.armed and self.scope is not None:
            hit = re.search(self.scope, path) is not None
        else:
            hit = self.matches(method, path, headers)
            if hit and not self.armed:
                self.armed = self.passed >= self.after
                self.passed += 0 if self.armed else 1
                hit = self.armed
        if not hit or (self.times is not None and self.failures.get(path, 0) >= self.times):
            return False
        self.failures[path] = self.failures.get(path, 0) + 1
        self.injected += 1
        return True


@dataclasses.dataclass
class Trigger:
    """``action()`` runs once, before the ``after + 1``-th request whose path matches ``path`` (and ``method``) is
    passed on, and after every request already passed on has been answered (so that "after 5" means five answered,
    however many a client sends at once); requests arriving meanwhile wait until it has run."""

    path: str
    action: Callable[[], None]
    method: str | None = "GET"
    after: int = 0
    seen: int = 0

    def due(self, method: str, path: str) -> bool:
        if (self.method is not None and method != self.method) or re.search(self.path, path) is None:
            return False
        self.seen += 1
        return self.seen == self.after + 1


class FaultyProxy:
    def __init__(self, upstream: str):
        self.upstream = urllib.parse.urlsplit(upstream)
        self.faults: list[Fault] = []
        self.triggers: list[Trigger] = []
        self.requests: list[tuple[str, str, int]] = []  # (method, path, status) of every request answered
        self.in_flight = self.most_in_flight = 0  # requests being answered now, and the most there were at once
        self.lock = threading.Lock()
        self.acting = threading.Lock()  # held while triggers are checked and their actions run
        self.passing = threading.Condition(self.lock)  # notified as each request passed on is answered
        self.passed_on = 0  # requests past the triggers and not yet answered
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), self.handler_class())
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def inject(self, *faults: Fault) -> None:
        with self.lock:
            self.faults = list(faults)

    def clear(self) -> None:
        self.inject()
        self.triggers = []

    def on(self, *triggers: Trigger) -> None:
        with self.lock:
            self.triggers = list(triggers)

    def run_triggers(self, method: str, path: str) -> None:
        # one request at a time: a request arriving while an action runs waits for it, so that e.g. an instance
        # deleted "as the first retrieval arrives" is gone for every retrieval after it, however many are in flight
        with self.acting:
            with self.lock:
                due = [trigger for trigger in self.triggers if trigger.due(method, path)]
                if due and not self.passing.wait_for(lambda: self.passed_on == 0, timeout=120):
                    raise RuntimeError("requests passed on before a trigger were still unanswered after 120 s")
            for trigger in due:
                trigger.action()
            with self.lock:
                self.passed_on += 1

    def answered(self) -> None:
        with self.lock:
            self.passed_on -= 1
            self.passing.notify_all()

    def count_in_flight(self, change: int) -> None:
        with self.lock:
            self.in_flight += change
            self.most_in_flight = max(self.most_in_flight, self.in_flight)

    def requested(self, pattern: str, method: str = "GET") -> list[str]:
        """The paths of the requests answered so far that match ``pattern``."""
        with self.lock:
            return [path for verb, path, _ in self.requests if verb == method and re.search(pattern, path)]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def failing(self, method: str, path: str, headers) -> Fault | None:
        with self.lock:
            return next((fault for fault in self.faults if fault.decide(method, path, headers)), None)

    def record(self, method: str, path: str, status: int) -> None:
        with self.lock:
            self.requests.append((method, path, status))

    def handler_class(self):
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # else each answer's body waits about 40 ms on a delayed acknowledgement

            def log_message(self, *args):
                pass

            def body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    chunks = []
                    while True:
                        size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                        chunks.append(self.rfile.read(size))
                        self.rfile.readline()
                        if size == 0:
                            return b"".join(chunks)
                return self.rfile.read(int(self.headers.get("Content-Length", 0) or 0))

            def answer(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
                self.send_response(status)
                length = str(len(body))
                for name, value in headers:
                    if name.lower() == "content-length" and self.command == "HEAD":
                        length = value  # a HEAD answer has no body but tells the object's size
                    elif name.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(name, value)
                self.send_header("Content-Length", length)
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)
                proxy.record(self.command, self.path, status)

            def forward(self) -> None:
                proxy.count_in_flight(+1)
                try:
                    self.pass_on()
                finally:
                    proxy.count_in_flight(-1)

            def pass_on(self) -> None:
                body = self.body()
                proxy.run_triggers(self.command, self.path)
                try:
                    self.pass_on_past_triggers(body)
                finally:
                    proxy.answered()

            def pass_on_past_triggers(self, body: bytes) -> None:
                fault = proxy.failing(self.command, self.path, self.headers)
                if fault is not None:
                    time.sleep(fault.delay)
                if fault is not None and fault.status is not None:
                    error = ERROR_BODY.format(code=fault.code).encode()
                    self.answer(fault.status, [("Content-Type", "application/xml"), *fault.headers], error)
                    return
                upstream = http.client.HTTPConnection(proxy.upstream.hostname, proxy.upstream.port, timeout=60)
                headers = {name: value for name, value in self.headers.items()
                           if name.lower() not in ("transfer-encoding", "connection")}
                headers["Content-Length"] = str(len(body))
                try:
                    upstream.request(self.command, self.path, body=body, headers=headers)
                    response = upstream.getresponse()
                    answer = response.status, response.getheaders(), response.read()
                except OSError:  # the server is gone: so is the answer, as the client would meet it
                    self.close_connection = True
                    proxy.record(self.command, self.path, 0)
                    return
                finally:
                    upstream.close()
                self.answer(*answer)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = forward

        return Handler
