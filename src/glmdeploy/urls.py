"""Checks on URLs users give (``--url``, ``--api-url``): pure, shared by the commands that take one."""

from __future__ import annotations

from urllib.parse import urlsplit

from glmdeploy.errors import UsageError

MIN_PORT = 1
MAX_PORT = 65535


def check_port(url: str, *, option: str) -> None:
    """Refuse a URL whose port is not a TCP port a server can listen on (1-65535).

    Port 0 or 99999 would otherwise fail later as "cannot connect" (exit 5 or 7), blaming the target.
    """
    try:
        port = urlsplit(url.strip()).port
    except ValueError:  # out of range 0-65535, or not a number
        port = -1
    if port is not None and not MIN_PORT <= port <= MAX_PORT:
        netloc = urlsplit(url.strip()).netloc.rpartition("@")[2]  # never repeat credentials
        raise UsageError(f"{option}: the port in {netloc!r} must be a number from {MIN_PORT} to {MAX_PORT}")
