"""How a flow's requests leave the process: a small Protocol and its httpx implementation.

The runner, not the transport, decides where to connect: when a ``resolve``
hook is given it rewrites the URL's host to the address DNS gives now and
keeps the name in the ``Host`` header (and as the TLS server name), so a flow
tests the region the world is sent to, not whatever this machine's resolver
cached.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import urlsplit, urlunsplit

import httpx

Resolver = Callable[[str], str]
"""``resolve(hostname) -> address`` (IPv4 or IPv6 text); raises when the name has none."""


def route(url: str, resolve: Resolver | None) -> tuple[str, str | None, str | None]:
    """(URL to connect to, ``Host`` header to send, TLS server name) for ``url``.

    Without ``resolve``, or for a URL whose host already is an address, the
    URL is used as it is. Errors of ``resolve`` propagate (the attempt fails).
    """
    parts = urlsplit(url)
    host = parts.hostname
    if resolve is None or not host or _is_address(host):
        return url, None, None
    address = resolve(host)
    literal = f"[{address}]" if ":" in address else address
    port = f":{parts.port}" if parts.port else ""
    server_name = host if parts.scheme == "https" else None
    return urlunsplit(parts._replace(netloc=literal + port)), host + port, server_name


def _is_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


@dataclass(frozen=True)
class HttpResponse:
    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""


class HttpTransport(Protocol):
    """Sends one request and returns the answer.

    Contract: not idempotent in general (a checkout creates an order); must
    honour ``timeout`` for connect and read; raises ``OSError`` or
    ``httpx.HTTPError`` (or any exception) when no answer came, which the
    runner treats as a retryable failure of the attempt. Must be safe to call
    from several threads at once (flows may run concurrently).
    """

    def request(
        self,
        method: str,
        url: str,
        *,
        headers: dict[str, str],
        json_body: Any,
        timeout: float,
        server_hostname: str | None = None,
    ) -> HttpResponse: ...


class HttpxTransport:
    """``HttpTransport`` over one ``httpx.Client``.

    ``trust_env=False``: proxy variables must not route lab or validation
    traffic elsewhere. Redirects are not followed (a flow asserts the status it
    got). ``verify`` is passed to httpx (a CA bundle path, or False in labs).
    """

    def __init__(self, *, verify: bool | str = True) -> None:
        self._client = httpx.Client(trust_env=False, follow_redirects=False, verify=verify)

    def request(
        self,
        method: str,
        url: str,
        *,
        headers: dict[str, str],
        json_body: Any,
        timeout: float,
        server_hostname: str | None = None,
    ) -> HttpResponse:
        extensions = {"sni_hostname": server_hostname} if server_hostname else None
        response = self._client.request(
            method,
            url,
            headers=headers,
            json=json_body,
            timeout=httpx.Timeout(timeout),
            extensions=extensions,
        )
        return HttpResponse(
            status=response.status_code,
            headers=dict(response.headers),
            body=response.content,
        )

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> HttpxTransport:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
