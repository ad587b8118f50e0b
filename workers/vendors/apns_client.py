"""The APNs wire client: token auth and APNs' HTTP/2 requests over :mod:`workers.vendors.wire`.

Owns the provider token and the request's shape; knows nothing of deliveries or
outcomes. ``push_many`` writes each request at most once and answers each with
an :class:`ApnsAnswer` (what APNs said) or an :class:`ApnsFailure` (why no answer
came), each request bounded by the push deadline. What HTTP/2 needs (one
connection multiplexing streams up to APNs' ``MAX_CONCURRENT_STREAMS``, more up
to ``max_connections`` only when those are full, flow control, late answers, a
silent connection dropped) is the wire client's
(:class:`workers.vendors.wire.WireClient`).

Provider tokens (ES256 JWTs, ``kid`` = key id, ``iss`` = team id, ``iat``): one per
key, shared by every connection and request, renewed after
``PROVIDER_TOKEN_LIFETIME_SECONDS`` (Apple rejects tokens older than an hour and
refreshes more often than every 20 minutes).
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from workers.adapters.pushes import PushRunner
from workers.vendors.loop import ChunkInterrupted
from workers.vendors.wire import (
    Answer,
    ConnectFailed,
    ConnectionLost,
    ConnectTimeout,
    NotSent,
    Request,
    WireClient,
    WireError,
)

log = logging.getLogger(__name__)

PRODUCTION_HOST = "api.push.apple.com"
SANDBOX_HOST = "api.sandbox.push.apple.com"
PROVIDER_TOKEN_LIFETIME_SECONDS = 40 * 60  # within Apple's [20 min, 60 min) window
MAX_ANSWER_BYTES = 16 * 1024  # APNs answers {"reason": "..."} at most
_RESULT_GRACE = 0.5  # seconds a chunk may take beyond the per-request deadline

__all__ = ["ApnsAnswer", "ApnsClient", "ApnsCredentials", "ApnsFailure", "ChunkInterrupted", "PushRequest"]


@dataclass(frozen=True)
class ApnsCredentials:
    """A token-auth key (.p8) and where its pushes go."""

    app_id: str
    key_pem: str
    key_id: str
    team_id: str
    bundle_id: str
    sandbox: bool


@dataclass(frozen=True)
class PushRequest:
    """One notification: ``payload`` is the exact (size-checked) JSON sent; ``time_to_live``
    0 means "attempt once, do not store" (``apns-expiration: 0``)."""

    device_token: str
    payload: bytes
    notification_id: str
    time_to_live: int | None = None
    priority: int | None = None
    collapse_key: str | None = None
    push_type: str | None = "alert"


@dataclass(frozen=True)
class ApnsAnswer:
    """What APNs answered to one request."""

    status: str  # the HTTP status, as text ("200", "410", ...)
    reason: str | None  # APNs' ``reason`` for an error
    apns_id: str | None
    retry_after: str | None  # the header as sent


@dataclass(frozen=True)
class ApnsFailure:
    """Why one request got no answer; ``credentials`` failures will not heal by retrying."""

    detail: str
    credentials: bool = False


class _BadCredentials(Exception):
    pass


class ProviderTokens:
    """One provider token per app and signing key, reused until it is ``PROVIDER_TOKEN_LIFETIME_SECONDS`` old."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._tokens: dict[tuple[str, str, str, str], tuple[str, float]] = {}
        self._keys: dict[str, ec.EllipticCurvePrivateKey] = {}
        self.issued = 0  # tokens signed (for tests and metrics)

    def authorization(self, credentials: ApnsCredentials, now: float | None = None) -> str:
        """``bearer <jwt>`` for this key; raises :class:`_BadCredentials` for a key that is not EC P-256 PEM."""
        now = time.time() if now is None else now
        key_hash = hashlib.sha256(credentials.key_pem.encode()).hexdigest()
        cache_key = (credentials.app_id, credentials.team_id, credentials.key_id, key_hash)
        with self._lock:
            cached = self._tokens.get(cache_key)
            if cached is not None and now - cached[1] < PROVIDER_TOKEN_LIFETIME_SECONDS:
                return cached[0]
            key = self._keys.get(key_hash)
            if key is None:
                key = self._keys[key_hash] = _load_key(credentials.key_pem)
            token = jwt.encode({"iss": credentials.team_id, "iat": int(now)}, key, algorithm="ES256",
                               headers={"kid": credentials.key_id})
            header = f"bearer {token}"
            self._tokens[cache_key] = (header, now)
            self.issued += 1
            return header


def _load_key(pem: str) -> ec.EllipticCurvePrivateKey:
    try:
        key = serialization.load_pem_private_key(pem.encode(), password=None)
    except (ValueError, TypeError):
        key = None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
        raise _BadCredentials("the app's APNs private key is not an EC P-256 key in PEM (.p8)")
    return key


class ApnsClient:
    """See the module docstring. ``host``/``port``/``ca_file`` point it elsewhere than
    Apple (a stand-in); with ``host=None`` each app goes to Apple's production or
    sandbox host. ``late_answers`` counts answers that came after the client had
    given up on the request (a push reported as failed that APNs may have delivered)."""

    def __init__(
        self,
        connect_timeout: float = 5.0,
        read_timeout: float = 10.0,
        *,
        host: str | None = None,
        port: int = 443,
        ca_file: str | None = None,
        max_connections: int = 10,
        deadline: float | None = None,
    ) -> None:
        # The whole of one request (connecting, waiting for a stream, the answer); default connect + read.
        self.deadline = deadline if deadline is not None else connect_timeout + read_timeout
        self.host = host
        self.port = port
        self.late_answers = 0
        self.tokens = ProviderTokens()
        # Production and sandbox apart (Apple's are two hosts; a stand-in serving both keeps two pools too).
        self._clients = {
            sandbox: WireClient(connect_timeout=connect_timeout, ca_file=ca_file,
                                max_http2_connections=max_connections, on_late_answer=self._count_late_answer)
            for sandbox in (False, True)
        }
        # HTTP/2 streams are the limit (the server's MAX_CONCURRENT_STREAMS), not a count of pushes.
        self._runner = PushRunner("APNs", self._clients[False], concurrency=1, deadline=self.deadline,
                                  also=(self._clients[True],))

    def push_many(
        self, credentials: ApnsCredentials, requests: Sequence[PushRequest]
    ) -> list[ApnsAnswer | ApnsFailure]:
        """Each request written at most once; one answer or failure per request, in order.

        Every request is bounded by the deadline, and so is the chunk (the requests go
        out concurrently). Raises :class:`ChunkInterrupted` (with the answers so far)
        when the wait is interrupted in this thread (the task's time limit).
        """
        if not requests:
            return []
        try:
            authorization = self.tokens.authorization(credentials)
        except _BadCredentials as exc:
            return [ApnsFailure(str(exc), credentials=True)] * len(requests)
        client = self._clients[credentials.sandbox]
        host = self.host or (SANDBOX_HOST if credentials.sandbox else PRODUCTION_HOST)
        origin = f"https://{host}:{self.port}" if self.host else f"https://{host}"
        answers: list[ApnsAnswer | ApnsFailure | None] = [None] * len(requests)

        async def push(index: int) -> ApnsAnswer | ApnsFailure:
            answers[index] = answer = await self._push(client, origin, credentials, authorization, requests[index])
            return answer

        try:
            self._runner.run_each(len(requests), push, self.deadline + _RESULT_GRACE)
        except ChunkInterrupted as exc:
            raise ChunkInterrupted(list(answers), exc.cause) from exc
        return [answer if answer is not None else ApnsFailure("APNs timed out") for answer in answers]

    async def _push(self, client: WireClient, origin: str, credentials: ApnsCredentials, authorization: str,
                    push: PushRequest) -> ApnsAnswer | ApnsFailure:
        headers = [("apns-id", push.notification_id), ("apns-topic", credentials.bundle_id),
                   ("authorization", authorization)]
        if push.time_to_live is not None:
            # 0 is Apple's "deliver once, do not store".
            headers.append(("apns-expiration", str(int(time.time()) + push.time_to_live if push.time_to_live > 0
                                                   else 0)))
        if push.priority is not None:
            headers.append(("apns-priority", str(push.priority)))
        if push.collapse_key is not None:
            headers.append(("apns-collapse-id", push.collapse_key))
        if push.push_type is not None:
            headers.append(("apns-push-type", push.push_type))
        request = Request("POST", f"{origin}/3/device/{push.device_token}", headers, push.payload)
        try:
            answer = await self._runner.request(request, MAX_ANSWER_BYTES, client)
        except TimeoutError:
            return ApnsFailure("APNs timed out")
        except ConnectTimeout:
            return ApnsFailure("timed out connecting to APNs")
        except ConnectFailed as exc:
            return ApnsFailure(f"cannot connect to APNs: {exc}")
        except ConnectionLost:
            return ApnsFailure("connection lost")
        except NotSent:
            return ApnsFailure("no usable APNs connection")
        except WireError as exc:
            return ApnsFailure(f"APNs client error: {type(exc).__name__}")
        return _answer(answer, push.notification_id)

    def _count_late_answer(self) -> None:
        self.late_answers += 1

    def close(self) -> None:
        """Close every connection and stop the loop's thread; push_many may still be
        called afterwards: it starts afresh."""
        self._runner.close()

    @property
    def loop_thread(self) -> threading.Thread | None:
        """The event loop's thread while it runs."""
        return self._runner.loop_thread


def _answer(answer: Answer, notification_id: str) -> ApnsAnswer | ApnsFailure:
    apns_id = answer.headers.get("apns-id")
    if apns_id is not None and apns_id.lower() != notification_id.lower():
        # APNs echoes the apns-id it was sent: an answer naming another request is not this one's.
        return ApnsFailure("APNs answered for another apns-id")
    reason = None
    if answer.body:
        try:
            document = json.loads(answer.body.decode("utf-8"))
        except ValueError:
            document = None
        if isinstance(document, dict) and isinstance(document.get("reason"), str):
            reason = document["reason"]
    return ApnsAnswer(str(answer.status) if answer.status else "", reason, apns_id, answer.headers.get("retry-after"))
