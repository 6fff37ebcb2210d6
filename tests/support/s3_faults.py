"""A fault-injecting HTTP proxy in front of the S3 endpoint on localhost: requests pass through to the real
(moto) server unless a :class:`Fault` matches, in which case the proxy answers with an S3 error instead, as an
overloaded or failing S3 would. Clients reach it through ``AWS_ENDPOINT_URL``; it records what it injected."""

from __future__ import annotations

import dataclasses
import http.client
import http.server
import re
import threading
import urllib.parse

ERROR_BODY = ('<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code><Message>injected by the test '
              'proxy</Message><RequestId>fault-injection</RequestId></Error>')


@dataclasses.dataclass
class Fault:
    """Requests whose ``/bucket/key?query`` matches ``path`` (and ``method``, and being a server-side copy when
    ``copies``) fail with ``status``/``code``: the first ``times`` requests of each path, or every one when
    ``times`` is None. With ``after``, the first ``after`` matching requests pass and the fault arms at the next
    one; once armed, ``scope`` (when given) widens what fails to every request matching it (a bucket that
    disappears mid-run)."""

    path: str
    status: int
    code: str
    method: str | None = None
    times: int | None = 1
    after: int = 0
    copies: bool = False
    scope: str | None = None
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


class FaultyS3Proxy:
    def __init__(self, upstream: str):
        self.upstream = urllib.parse.urlsplit(upstream)
        self.faults: list[Fault] = []
        self.requests: list[tuple[str, str, int]] = []  # (method, path, status) of every request answered
        self.lock = threading.Lock()
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
                body = self.body()
                fault = proxy.failing(self.command, self.path, self.headers)
                if fault is not None:
                    error = ERROR_BODY.format(code=fault.code).encode()
                    self.answer(fault.status, [("Content-Type", "application/xml")], error)
                    return
                upstream = http.client.HTTPConnection(proxy.upstream.hostname, proxy.upstream.port, timeout=60)
                headers = {name: value for name, value in self.headers.items()
                           if name.lower() not in ("transfer-encoding", "connection")}
                headers["Content-Length"] = str(len(body))
                upstream.request(self.command, self.path, body=body, headers=headers)
                response = upstream.getresponse()
                self.answer(response.status, response.getheaders(), response.read())
                upstream.close()

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = forward

        return Handler
