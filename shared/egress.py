"""Where pushq may send Web Push requests: the egress rules for subscription endpoints.

A Web Push subscription's endpoint is a URL the *browser* chose, so any user who
can register a device can make the workers POST to it. Left unchecked, that is a
server-side request forgery: a subscription pointing at ``http://127.0.0.1:6379``
or the cloud metadata service turns pushq into a proxy into its own network
(OWASP API7). Two layers keep egress to real push services:

* at registration, :func:`check_push_endpoint` admits only ``https`` URLs on port
  443, without userinfo, to a host name (never an IP literal, in any spelling)
  on the allowlist of browser push services, extended by the operator with
  ``PUSHQ_WEBPUSH_EXTRA_HOSTS``;
* at connect time, :func:`is_public_address` tells whether an address a host
  name resolved to may be connected to, so a DNS answer pointing an allowed name
  at a private address is refused too.

``PUSHQ_ALLOW_HTTP_ENDPOINTS`` (development only) additionally admits ``http://``
to loopback on any port, for the local stand-in push service.

Pure functions: no Flask, no Celery, no I/O (nothing here resolves names).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from urllib.parse import urlsplit

__all__ = [
    "DEFAULT_PUSH_HOSTS",
    "EndpointRefused",
    "check_push_endpoint",
    "check_webhook_url",
    "host_allowed",
    "is_public_address",
    "parse_host_patterns",
]

# The browser push services (the list push gateways use as an allowlist; vendor-facts.md).
# A leading "*." means any subdomain (not the bare domain).
DEFAULT_PUSH_HOSTS: tuple[str, ...] = (
    "fcm.googleapis.com",  # Chrome, Edge on Android, Opera, Brave, Samsung Internet
    "android.googleapis.com",  # older Chrome subscriptions
    "updates.push.services.mozilla.com",  # Firefox
    "*.notify.windows.com",  # Edge on Windows
    "*.push.apple.com",  # Safari (web.push.apple.com)
)

HTTPS_PORT = 443
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})

# A DNS host name in its ASCII form: dot-separated LDH labels of 1..63 characters, 253 in all.
_LABEL = r"(?!-)[a-z0-9-]{1,63}(?<!-)"
_HOST_NAME = re.compile(rf"{_LABEL}(?:\.{_LABEL})*")
# WHATWG URL parsing treats a host whose last label is a number (decimal, 0x-hex, octal) as IPv4:
# "2130706433", "0x7f000001", "0177.0.0.1", "127.1" all reach 127.0.0.1 in some client.
_NUMERIC_LABEL = re.compile(r"(?:0x[0-9a-f]*|[0-9]+)")
# Characters no endpoint needs and URL parsers disagree about ("\" is "/" to browsers, not to urlsplit).
_UNSAFE_CHARACTERS = re.compile(r"[\x00-\x20\x7f\\]")

_IPV4_COMPATIBLE = ipaddress.ip_network("::/96")  # deprecated ::a.b.c.d, and :: and ::1
_NAT64 = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))
# IPv6 ranges never public whatever this Python's ``is_global`` table says (it differs between releases):
# site-local (deprecated by RFC 3879, still routed inside some networks), Teredo (a tunnel whose far end
# is an IPv4 host), documentation (2001:db8::/32 and RFC 9637's 3fff::/20), SRv6 SIDs (RFC 9602) and
# the discard prefix.
_NOT_PUBLIC_V6 = tuple(ipaddress.ip_network(network) for network in (
    "fec0::/10", "2001::/32", "2001:db8::/32", "3fff::/20", "5f00::/16", "100::/64",
))


class EndpointRefused(ValueError):
    """A push endpoint pushq will not send to; ``reason`` says why (safe to show the caller)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def parse_host_patterns(patterns: Iterable[str]) -> tuple[str, ...]:
    """Validate host patterns (``push.example.com`` or ``*.push.example.com``); lowercased.

    Raises ValueError for anything else (an IP address, a port, a URL, a bare
    ``*``): an allowlist entry must name push-service hosts, never a network.
    """
    result: list[str] = []
    for raw in patterns:
        pattern = raw.strip().lower()
        name = pattern[2:] if pattern.startswith("*.") else pattern
        if not _is_host_name(name):
            raise ValueError(f"{raw!r} is not a host name or *.domain pattern")
        if pattern not in result:
            result.append(pattern)
    return tuple(result)


def host_allowed(host: str, extra_hosts: Iterable[str] = ()) -> bool:
    """Whether ``host`` (lowercase) matches the default push hosts or one of ``extra_hosts``."""
    for pattern in (*DEFAULT_PUSH_HOSTS, *extra_hosts):
        pattern = pattern.lower()
        if pattern.startswith("*."):
            if host.endswith(pattern[1:]) and len(host) > len(pattern) - 1:
                return True
        elif host == pattern:
            return True
    return False


def check_push_endpoint(url: str, *, allow_http_loopback: bool = False, extra_hosts: Iterable[str] = ()) -> None:
    """Refuse (:class:`EndpointRefused`) a Web Push endpoint pushq must not send to.

    Allowed: ``https://<allowlisted host name>[:443]/...``. With
    ``allow_http_loopback`` (``PUSHQ_ALLOW_HTTP_ENDPOINTS``, development only) also
    ``http://`` to 127.0.0.1, localhost or [::1] on any port.
    """
    host = _check_https_url(url, allow_http_loopback=allow_http_loopback)
    if host is not None and not host_allowed(host, extra_hosts):
        raise EndpointRefused(
            "endpoint host is not a known push service (an operator can add it with PUSHQ_WEBPUSH_EXTRA_HOSTS)"
        )


def check_webhook_url(url: str, *, allow_http_loopback: bool = False) -> None:
    """Refuse (:class:`EndpointRefused`) an outcome webhook URL pushq must not send to.

    The Web Push rules without the push-service allowlist (a webhook is the
    app's own server): ``https`` on port 443 to a host name, never an IP literal
    or userinfo; the connection then goes only to public addresses
    (:func:`is_public_address`, checked at connect time). ``allow_http_loopback``
    as for Web Push (development only).
    """
    if len(url) > MAX_WEBHOOK_URL_CHARS:
        raise EndpointRefused(f"endpoint is longer than {MAX_WEBHOOK_URL_CHARS} characters")
    _check_https_url(url, allow_http_loopback=allow_http_loopback)


MAX_WEBHOOK_URL_CHARS = 2048


def _check_https_url(url: str, *, allow_http_loopback: bool) -> str | None:
    """The host of an https URL on 443 that names a host; None for an admitted http loopback URL."""
    if _UNSAFE_CHARACTERS.search(url):
        raise EndpointRefused("endpoint contains spaces, control characters or backslashes")
    if not url.isascii():
        # Browsers serialize endpoints in ASCII (xn-- host names, percent-encoded paths); anything else is
        # a spelling URL parsers disagree about (NFKC folding "ａ" to "a", "。" to ".").
        raise EndpointRefused("endpoint contains non-ASCII characters (host names are written in their xn-- form)")
    try:
        parts = urlsplit(url)
    except ValueError:  # "Invalid IPv6 URL" (an unbalanced "[")
        raise EndpointRefused("endpoint is not a valid URL") from None
    scheme = parts.scheme.lower()
    if scheme not in ("https", "http") or not parts.netloc:
        raise EndpointRefused("endpoint must be an https URL")
    if "@" in parts.netloc:
        raise EndpointRefused("endpoint must not contain user information (user:password@)")
    try:
        port = parts.port
    except ValueError:
        raise EndpointRefused("endpoint port is not a number between 0 and 65535") from None
    host = (parts.hostname or "").lower()
    if not host:
        raise EndpointRefused("endpoint has no host")
    if scheme == "http":
        if allow_http_loopback and host in LOOPBACK_HOSTS:
            return None
        raise EndpointRefused("endpoint must be an https URL")
    if _is_ip_literal(host, bracketed=parts.netloc.startswith("[")):
        raise EndpointRefused("endpoint host must be a push service's name, not an IP address")
    if port is not None and port != HTTPS_PORT:
        raise EndpointRefused("endpoint port must be 443")
    if not _is_host_name(host):
        raise EndpointRefused("endpoint host is not a valid host name")
    return host


def is_public_address(address: object) -> bool:
    """Whether a resolved address may be connected to: globally routable unicast, nothing local or private.

    ``ipaddress``'s ``is_global`` and not multicast, with the IPv4 address inside
    an IPv4-mapped (``::ffff:127.0.0.1``), 6to4 or NAT64 IPv6 address checked too
    (NAT64 of a public IPv4 address is public: IPv6-only networks reach IPv4 that
    way); the deprecated IPv4-compatible range ``::/96``, site-local ``fec0::/10``,
    Teredo ``2001::/32`` and the documentation, SRv6 and discard prefixes are never
    public. Anything that is not an IP address is False (fail closed).
    """
    try:
        ip = ipaddress.ip_address(address)  # type: ignore[arg-type]
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return is_public_address(ip.ipv4_mapped)
        if ip in _IPV4_COMPATIBLE or any(ip in network for network in _NOT_PUBLIC_V6):
            return False
        embedded = ip.sixtofour
        if embedded is None and any(ip in network for network in _NAT64):
            embedded = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if embedded is not None and not is_public_address(embedded):
            return False
    return ip.is_global and not ip.is_multicast


def _is_host_name(host: str) -> bool:
    return len(host) <= 253 and bool(_HOST_NAME.fullmatch(host)) and not _NUMERIC_LABEL.fullmatch(host.rsplit(".", 1)[-1])


def _is_ip_literal(host: str, *, bracketed: bool) -> bool:
    """An IP address in any spelling a client might accept: [v6], dotted, integer, hex, octal, short forms."""
    if bracketed or ":" in host:
        return True
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        pass
    return bool(_NUMERIC_LABEL.fullmatch(host.rstrip(".").rsplit(".", 1)[-1]))
