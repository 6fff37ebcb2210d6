"""Who the review app answers: with a bearer token, only requests that carry it; without one, only requests to a
loopback address (the app then listens on one, and a web page elsewhere cannot reach it through a name that
rebinds to 127.0.0.1). A form post must come from the app's own origin (its ``Origin`` and, from a browser,
``Sec-Fetch-Site``; the pages send their origin to themselves alone, ``Referrer-Policy: same-origin``). Plain functions of a request's method and
headers, so they are checked without a server.
"""

from __future__ import annotations

import hmac
import ipaddress
import pathlib
import urllib.parse

MINIMUM_TOKEN_CHARACTERS = 16


def read_token(token_file: str) -> str:
    """The bearer token a token file holds (its first line, stripped); refuses an empty or short one."""
    lines = pathlib.Path(token_file).read_text().strip().splitlines()
    token = lines[0].strip() if lines else ""
    if len(token) < MINIMUM_TOKEN_CHARACTERS:
        raise ValueError(f"the token in {token_file} is shorter than {MINIMUM_TOKEN_CHARACTERS} characters")
    return token


def is_loopback(host: str | None) -> bool:
    """Whether a host name or address is this machine's loopback (``localhost``, 127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address((host or "").strip("[]")).is_loopback
    except ValueError:
        return False


def refusal(method: str, scheme: str, headers, token: str | None) -> tuple[int, str] | None:
    """(status, reason) for a request the app must not answer, None for one it may."""
    host = headers.get("host", "")
    if token is not None:
        given = headers.get("authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
            return 401, "a bearer token is needed (Authorization: Bearer <token>)"
    elif not is_loopback(urllib.parse.urlsplit(f"//{host}").hostname):
        return 421, "without a token this app answers requests to a loopback address only"
    origin, site = headers.get("origin"), headers.get("sec-fetch-site", "same-origin")
    if method == "POST" and ((origin and origin != f"{scheme}://{host}") or site not in ("same-origin", "none")):
        return 403, "a post from another origin is refused"
    return None
