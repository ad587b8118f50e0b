"""What goes over the wire and what comes back: a request, an answer, and why none came.

The errors say what a caller may do next: :class:`NotSent` (nothing left this
process: trying again elsewhere cannot push twice), :class:`ConnectionLost` (the
request was written and may have been acted on: the caller's retry policy
decides, the client never re-sends it).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

__all__ = ["Answer", "ConnectFailed", "ConnectTimeout", "ConnectionLost", "EgressRefused", "Headers", "NotSent", "Request", "WireError"]


class Headers:
    """An answer's headers: names lowercased, values decoded as UTF-8 (bytes that are not
    survive as surrogate escapes, for the adapter to clean); the first of repeated names wins."""

    __slots__ = ("_items",)

    def __init__(self, items: Iterable[tuple[bytes, bytes]] = ()) -> None:
        self._items: dict[str, str] = {}
        for name, value in items:
            key = name.decode("ascii", "replace").lower()
            if key not in self._items:
                self._items[key] = value.decode("utf-8", "surrogateescape")

    def get(self, name: str, default: str | None = None) -> str | None:
        return self._items.get(name.lower(), default)

    def items(self) -> list[tuple[str, str]]:
        return list(self._items.items())

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._items

    def __repr__(self) -> str:
        return f"Headers({self._items!r})"


@dataclass(frozen=True, slots=True)
class Request:
    """One request: ``url`` is absolute (http or https); ``headers`` are sent as given (lowercase
    names for HTTP/2; Host, Content-Length and the pseudo-headers are added by the client)."""

    method: str
    url: str
    headers: Sequence[tuple[str, str]] = ()
    body: bytes = b""


@dataclass(frozen=True, slots=True)
class Answer:
    """What the server answered. ``complete`` is False when the body was cut at the read bound
    (the status and headers are still the server's)."""

    status: int
    headers: Headers
    body: bytes
    complete: bool = True
    http_version: str = "1.1"


class WireError(Exception):
    """No answer came for a request."""


class NotSent(WireError):
    """The request never left this process (no connection, a connection closing before it
    was written, a stream the server refused unprocessed): safe to try again."""


class ConnectFailed(NotSent):
    """No connection could be made to the origin (refused, unreachable, TLS failed)."""


class ConnectTimeout(ConnectFailed):
    """Connecting (TCP, TLS, the HTTP/2 preface) took longer than the connect timeout."""


class EgressRefused(ConnectFailed):
    """The host resolved to no address the egress rules allow (see :mod:`shared.egress`)."""


class ConnectionLost(WireError):
    """The connection ended, or the server reset the stream, after the request was written:
    the server may have acted on it, so it is never re-sent here."""
