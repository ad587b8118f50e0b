"""Resolve a host and connect only to addresses the egress rules allow, within a timeout.

A host name that passed :func:`shared.egress.check_push_endpoint` may still
resolve to loopback, a private network or the metadata service (DNS rebinding).
The name is resolved here and every address it gave is checked with
:func:`shared.egress.is_public_address` before a socket is opened; the
connection goes to a checked address while TLS still verifies the host name.
The vendors' own fixed hosts (APNs, FCM, a configured stand-in) are trusted
as configured: their policy is :data:`ANY_ADDRESS`.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import ssl
from collections.abc import Callable
from enum import Enum

from shared.egress import is_public_address
from workers.vendors.wire.answer import ConnectFailed, ConnectTimeout, EgressRefused

__all__ = ["AddressPolicy", "connect", "resolve"]


class AddressPolicy(Enum):
    """Which resolved addresses a connection may go to."""

    PUBLIC = "public"  # globally routable unicast only (Web Push endpoints chosen by browsers)
    PUBLIC_OR_LOOPBACK = "public-or-loopback"  # development: the local stand-in push service
    ANY_ADDRESS = "any"  # a host pushq's configuration names (APNs, FCM, their stand-ins)

    def allows(self, address: str) -> bool:
        if self is AddressPolicy.ANY_ADDRESS or is_public_address(address):
            return True
        return self is AddressPolicy.PUBLIC_OR_LOOPBACK and ipaddress.ip_address(address).is_loopback


ANY_ADDRESS = AddressPolicy.ANY_ADDRESS


async def resolve(host: str, port: int, policy: AddressPolicy) -> list[tuple[socket.AddressFamily, str]]:
    """The addresses of ``host`` a connection may go to (family, address); raises
    :class:`EgressRefused` when it resolved only to forbidden ones."""
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    except (OSError, UnicodeError) as exc:
        raise ConnectFailed(f"cannot resolve {host}: {exc}") from exc
    found: list[tuple[socket.AddressFamily, str]] = []
    for family, _, _, _, sockaddr in infos:
        address = str(sockaddr[0])
        if (family, address) not in found and policy.allows(address):
            found.append((family, address))
    if not found:
        raise EgressRefused(f"{host} resolves to no public address")
    return found


async def connect(
    host: str,
    port: int,
    protocol_factory: Callable[[], asyncio.Protocol],
    *,
    ssl_context: ssl.SSLContext | None,
    policy: AddressPolicy,
    timeout: float,
) -> tuple[asyncio.Transport, asyncio.Protocol]:
    """A connection to the first allowed address of ``host`` that answers, within ``timeout``
    seconds in all (resolving, TCP and TLS). Raises :class:`ConnectFailed` (or
    :class:`EgressRefused`)."""
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(timeout):
            last: Exception | None = None
            for family, address in await resolve(host, port, policy):
                try:
                    made_transport, protocol = await loop.create_connection(
                        protocol_factory, address, port, family=family, ssl=ssl_context,
                        server_hostname=host if ssl_context is not None else None,
                    )
                except (OSError, ssl.SSLError) as exc:
                    last = exc
                    continue
                assert isinstance(made_transport, asyncio.Transport)
                return made_transport, protocol
    except TimeoutError:
        raise ConnectTimeout(f"timed out connecting to {host}:{port}") from None
    raise ConnectFailed(f"cannot connect to {host}:{port}: {type(last).__name__}: {last}") from last
