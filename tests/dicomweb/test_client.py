"""The DICOMweb client factory: credentials from a file or the environment (never shown), settings refused with a
sentence, and its session against a real HTTP server on localhost: retries with back-off on 429 and 5xx, at most
``max_concurrent_requests`` requests at once, the bearer token sent, a refusal raised as ``AccessRefusedError``."""

import concurrent.futures
import contextlib
import http.server
import json
import logging
import threading
import time

import pytest
import requests

from pipeline.dicomweb.client import (AccessRefusedError, ClientSettings, Credentials, DicomwebConfigError,
                                      dicomweb_client, dicomweb_session, load_credentials)


class StubDicomweb(http.server.ThreadingHTTPServer):
    """Answers QIDO-RS searches with ``[]`` after ``failures`` answers of ``failure_status``; records each request's
    Authorization header and the most requests it held at once."""

    def __init__(self, failures: int = 0, failure_status: int = 503, delay: float = 0.0):
        super().__init__(("127.0.0.1", 0), StubHandler)
        self.failures, self.failure_status, self.delay = failures, failure_status, delay
        self.requests, self.in_flight, self.most_in_flight = 0, 0, 0
        self.authorizations: list[str | None] = []
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/dicom-web"


class StubHandler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        stub = self.server
        with stub.lock:
            stub.requests += 1
            stub.in_flight += 1
            stub.most_in_flight = max(stub.most_in_flight, stub.in_flight)
            stub.authorizations.append(self.headers.get("Authorization"))
            failing = stub.requests <= stub.failures
        time.sleep(stub.delay)
        with stub.lock:
            stub.in_flight -= 1
        status, body = (stub.failure_status, b"") if failing else (200, b"[]")
        self.send_response(status)
        if failing:
            self.send_header("Retry-After", "0")
        self.send_header("Content-Type", "application/dicom+json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@contextlib.contextmanager
def stub_server(**options):
    server = StubDicomweb(**options)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("status", [429, 503])
def test_busy_or_failing_answers_are_retried_until_one_succeeds(status):
    with stub_server(failures=2, failure_status=status) as server:
        client = dicomweb_client(ClientSettings(server.url, backoff_seconds=0.01), Credentials())
        assert client.search_for_studies() == []
        assert server.requests == 3


def test_a_server_failing_beyond_the_retries_gives_its_status():
    with stub_server(failures=10, failure_status=502) as server:
        client = dicomweb_client(ClientSettings(server.url, retries=2, backoff_seconds=0.01), Credentials())
        with pytest.raises(requests.HTTPError, match="502"):
            client.search_for_studies()
        assert server.requests == 3


def test_requests_beyond_the_bound_wait_for_a_connection():
    with stub_server(delay=0.15) as server:
        client = dicomweb_client(ClientSettings(server.url, max_concurrent_requests=2), Credentials())
        with concurrent.futures.ThreadPoolExecutor(6) as pool:
            assert list(pool.map(lambda _: client.search_for_studies(), range(6))) == [[]] * 6
        assert (server.requests, server.most_in_flight) == (6, 2)


def test_a_bearer_token_is_sent_and_a_refusal_names_where_the_credentials_came_from(tmp_path):
    (tmp_path / "pacs.json").write_text(json.dumps({"token": "t0ken-for-the-pacs"}))
    credentials = load_credentials(tmp_path / "pacs.json")
    with stub_server() as server:
        dicomweb_client(ClientSettings(server.url), credentials).search_for_studies()
        assert server.authorizations == ["Bearer t0ken-for-the-pacs"]
    with stub_server(failures=1, failure_status=401) as server:
        with pytest.raises(AccessRefusedError, match=f"HTTP 401 Unauthorized.*in credentials file {tmp_path}"):
            dicomweb_client(ClientSettings(server.url), credentials).search_for_studies()


def test_credentials_come_from_a_file_or_the_environment_and_are_never_shown(tmp_path, monkeypatch, caplog):
    path = tmp_path / "pacs.json"
    path.write_text(json.dumps({"username": "reader", "password": "s3cret-password"}))
    path.chmod(0o644)
    with caplog.at_level(logging.WARNING):
        from_file = load_credentials(path)
    assert (from_file.username, from_file.password) == ("reader", "s3cret-password")
    assert "chmod 600" in caplog.text and "s3cret" not in repr(from_file) + caplog.text
    monkeypatch.setenv("PACS_USERNAME", "writer")
    monkeypatch.setenv("PACS_PASSWORD", "an0ther-secret")
    from_environment = load_credentials(environment_prefix="PACS_")
    assert (from_environment.username, from_environment.password) == ("writer", "an0ther-secret")
    assert not Credentials.from_environment({}).given
    session = dicomweb_session(ClientSettings("https://pacs.example.org/dicom-web"), from_environment)
    assert session.verify is True and session.auth == ("writer", "an0ther-secret")


@pytest.mark.parametrize("content, message", [
    ("not json", "is not JSON"),
    (json.dumps({"username": "reader"}), "a user name needs its password"),
    (json.dumps({"token": "t", "username": "u", "password": "p"}), "a token or a user name and password, not both"),
    (json.dumps({"user": "u"}), "username and password, or token, and nothing else"),
])
def test_unusable_credentials_are_refused_in_a_sentence_without_the_secret(tmp_path, content, message):
    path = tmp_path / "pacs.json"
    path.write_text(content)
    with pytest.raises(DicomwebConfigError, match=message) as refused:
        load_credentials(path)
    assert str(path) in str(refused.value) and '"p"' not in str(refused.value)


@pytest.mark.parametrize("url, message", [
    ("ftp://pacs/dicom-web", "must be http:// or https://"),
    ("https://reader:secret@pacs.example.org/dicom-web", "must not hold credentials"),
])
def test_unusable_urls_are_refused(url, message):
    with pytest.raises(DicomwebConfigError, match=message):
        ClientSettings(url)
