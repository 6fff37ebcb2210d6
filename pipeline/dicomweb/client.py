"""A DICOMweb client for any DICOMweb server: the PACS the screening reads MRI from (QIDO-RS, WADO-RS) and writes
reports to (STOW-RS). In: the server's URL and settings (``ClientSettings``) and credentials (``Credentials``, read
from a file or the environment, never from a command line); out: a ``dicomweb_client.DICOMwebClient``.

Its HTTP session sends basic auth or a bearer token (an answer 401 or 403 raises ``AccessRefusedError``, naming
where the credentials came from), verifies TLS unless told otherwise (``verify``: True, or a CA bundle), holds at
most ``max_concurrent_requests`` connections (a request beyond waits for one), and retries with exponential back-off
on connection failures and on 429 and 5xx answers, respecting Retry-After (urllib3's ``Retry`` on the session's
adapters; dicomweb-client's own retrying is turned off, so a request is retried in one place).
POST is retried too: storing an instance whose SOP Instance UID is fixed, on a server that overwrites, is
idempotent, and the reports' UIDs are (``pipeline.dicomweb.findings``).

Credentials: a JSON file ``{"username": ..., "password": ...}`` or ``{"token": ...}``, or the environment variables
``<prefix>USERNAME`` and ``<prefix>PASSWORD``, or ``<prefix>TOKEN`` (prefix ``DICOMWEB_`` unless another is given:
two servers can be configured side by side). No message or log line shows a password or token; dicomweb-client's
own INFO lines, which name study UIDs, are kept out of the log.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import logging
import os
import pathlib
import stat
import urllib.parse
from collections.abc import Mapping

import requests
from dicomweb_client import DICOMwebClient
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from pipeline.dicomweb.findings import keep_identifiers_out_of_logs

logger = logging.getLogger(__name__)

ENVIRONMENT_PREFIX = "DICOMWEB_"
RETRIED_STATUSES = (429, 500, 502, 503, 504)
RETRIED_METHODS = ("GET", "HEAD", "OPTIONS", "POST", "PUT", "DELETE")
MAXIMUM_CREDENTIALS_FILE_BYTES = 64 * 1024
# dicomweb-client sends a body larger than its chunk size as a stream, which a retry cannot send again: STOW-RS
# bodies up to this size go whole
CHUNK_BYTES = 64 * 1024 * 1024


class DicomwebConfigError(ValueError):
    """Settings or credentials that cannot work; the message says what to fix and shows no secret."""


class AccessRefusedError(RuntimeError):
    """The server refused the credentials (HTTP 401 or 403); the message names where they came from."""


@dataclasses.dataclass(frozen=True)
class Credentials:
    """Basic auth (``username`` and ``password``), a bearer ``token``, or neither (a server without auth).
    ``source`` says where they came from, for messages."""

    username: str | None = None
    password: str | None = dataclasses.field(default=None, repr=False)
    token: str | None = dataclasses.field(default=None, repr=False)
    source: str = "no credentials"

    def __post_init__(self):
        if self.token and (self.username or self.password):
            raise DicomwebConfigError(f"{self.source}: give a token or a user name and password, not both")
        if bool(self.username) != bool(self.password):
            raise DicomwebConfigError(f"{self.source}: a user name needs its password, and a password its user name")

    @property
    def given(self) -> bool:
        return bool(self.token or self.username)

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> Credentials:
        """Credentials from a JSON file; warns when its group or other users may read it."""
        path = pathlib.Path(path)
        source = f"credentials file {path}"
        try:
            if path.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
                logger.warning("%s can be read by its group or other users: chmod 600 it", source)
            if path.stat().st_size > MAXIMUM_CREDENTIALS_FILE_BYTES:
                raise DicomwebConfigError(f"{source} is larger than {MAXIMUM_CREDENTIALS_FILE_BYTES} bytes: not a "
                                          f"credentials file")
            values = json.loads(path.read_text(encoding="utf-8"))
        except OSError as error:
            raise DicomwebConfigError(f"{source} cannot be read ({error.strerror or error})") from None
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise DicomwebConfigError(f"{source} is not JSON: write {{\"username\": ..., \"password\": ...}} or "
                                      f"{{\"token\": ...}}") from None
        if not isinstance(values, dict) or set(values) - {"username", "password", "token"}:
            raise DicomwebConfigError(f"{source} holds an object with username and password, or token, and nothing "
                                      f"else")
        return cls(**{key: str(value) for key, value in values.items()}, source=source)

    @classmethod
    def from_environment(cls, environment: Mapping[str, str] | None = None,
                         prefix: str = ENVIRONMENT_PREFIX) -> Credentials:
        """Credentials from ``<prefix>USERNAME`` and ``<prefix>PASSWORD``, or ``<prefix>TOKEN``; none when unset."""
        environment = os.environ if environment is None else environment
        values = {key: environment.get(prefix + key.upper()) or None for key in ("username", "password", "token")}
        return cls(**values, source=f"the environment variables {prefix}USERNAME, {prefix}PASSWORD, {prefix}TOKEN")


def load_credentials(credentials_file: str | os.PathLike | None = None,
                     environment_prefix: str = ENVIRONMENT_PREFIX) -> Credentials:
    """The credentials in ``credentials_file`` when given, else those in the environment (possibly none)."""
    if credentials_file:
        return Credentials.from_file(credentials_file)
    return Credentials.from_environment(prefix=environment_prefix)


@dataclasses.dataclass(frozen=True)
class ClientSettings:
    """Where the DICOMweb server is and how to talk to it."""

    url: str  # the DICOMweb root, e.g. https://pacs.example.org/dicom-web
    max_concurrent_requests: int = 4
    retries: int = 4  # retries of one request, after its first try
    backoff_seconds: float = 0.5  # the first wait before a retry; each further one doubles (to 30 s at most)
    connect_timeout_seconds: float = 10.0
    read_timeout_seconds: float = 120.0
    verify: bool | str = True  # verify the server's TLS certificate (True), against a CA bundle (its path), or not

    def __post_init__(self):
        parts = urllib.parse.urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise DicomwebConfigError(f"the DICOMweb URL must be http:// or https:// and name a host, not {self.url!r}")
        if parts.username or parts.password:
            raise DicomwebConfigError("the DICOMweb URL must not hold credentials: give them in a credentials file "
                                      "or the environment")
        if self.max_concurrent_requests < 1 or self.retries < 0 or self.backoff_seconds < 0:
            raise DicomwebConfigError("max_concurrent_requests is at least 1, retries and backoff_seconds at least 0")

    @property
    def loopback(self) -> bool:
        host = urllib.parse.urlsplit(self.url).hostname
        try:
            return host == "localhost" or ipaddress.ip_address(host).is_loopback
        except ValueError:
            return False


def retry_policy(settings: ClientSettings) -> Retry:
    """Retries of a failed connection, or of an answer 429 or 5xx, with exponential back-off and Retry-After; the
    last answer is returned (not raised), so the caller sees its status."""
    return Retry(total=settings.retries, connect=settings.retries, read=settings.retries, status=settings.retries,
                 other=0, backoff_factor=settings.backoff_seconds, backoff_max=30.0,
                 status_forcelist=RETRIED_STATUSES, allowed_methods=RETRIED_METHODS,
                 respect_retry_after_header=True, raise_on_status=False)


def dicomweb_session(settings: ClientSettings, credentials: Credentials) -> requests.Session:
    """A session that authenticates, verifies TLS as set, bounds its connections and retries."""
    if credentials.given and not settings.loopback and settings.url.startswith("http://"):
        logger.warning("credentials are sent to %s unencrypted (http://): use https:// outside this machine",
                       urllib.parse.urlsplit(settings.url).hostname)
    session = requests.Session()
    session.verify = settings.verify
    if credentials.token:
        session.headers["Authorization"] = f"Bearer {credentials.token}"
    elif credentials.username:
        session.auth = (credentials.username, credentials.password)
    adapter = HTTPAdapter(pool_connections=1, pool_maxsize=settings.max_concurrent_requests, pool_block=True,
                          max_retries=retry_policy(settings))
    for scheme in ("http://", "https://"):
        session.mount(scheme, adapter)
    session.hooks["response"].append(refuse_on_401_or_403(credentials.source))
    return session


def dicomweb_client(settings: ClientSettings, credentials: Credentials) -> DICOMwebClient:
    """A DICOMweb client over :func:`dicomweb_session`."""
    keep_identifiers_out_of_logs()
    client = DICOMwebClient(settings.url, session=dicomweb_session(settings, credentials), chunk_size=CHUNK_BYTES,
                            timeout=(settings.connect_timeout_seconds, settings.read_timeout_seconds))
    client.set_http_retry_params(retry=False)
    return client


def refuse_on_401_or_403(credentials_source: str):
    """A response hook raising ``AccessRefusedError`` for an HTTP 401 or 403, naming where the credentials came
    from: every caller of the session (search, retrieve, store) gets the same clear error."""
    def hook(response: requests.Response, *args, **kwargs) -> None:
        if response.status_code in (401, 403):
            response.close()  # the hook runs before the body is read: unclosed, the connection never returns
            raise AccessRefusedError(
                f"the DICOMweb server at {urllib.parse.urlsplit(response.url).netloc} refused the credentials (HTTP "
                f"{response.status_code} {response.reason}): check the user name and password, or the token, in "
                f"{credentials_source}")
    return hook
