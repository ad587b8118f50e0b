"""Capacity of each vendor stand-in on its own: `python -m bench standins`.

The pipeline benchmark is only meaningful if the stand-ins are not what limits
it, so this measures each one alone, in its own process, with a client that
does as little as possible per request: Web Push bodies are encrypted and the
VAPID header signed before the clock starts (the stand-in still decrypts and
checks each one), and pushes go out over several keep-alive connections at
once (HTTP/2 streams for APNs). It reports pushes per second and the
stand-in's own CPU per push (user+system of its process, from psutil): on this
2-core machine the client competes for the same cores, so the CPU figure is the
better measure of what the stand-in could do with a core to itself.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import ssl
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import aiohttp
import httpx
import jwt
import psutil
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from pywebpush import WebPusher

from bench.launch import ApnsService, FcmService, WebPushService, new_apns_key, start_apns, start_fcm, start_webpush
from bench.procs import BenchError, Child, Processes, install_signal_handlers

PAYLOAD = json.dumps({"title": "Your shift starts in 30 min", "body": "Open GymOps to view details.",
                      "data": {"route": "/schedule"}}, separators=(",", ":")).encode()
FCM_SCOPE = "https://www.googleapis.com/auth/firebase.messaging"
GOOGLE_TOKEN_AUDIENCE = "https://oauth2.googleapis.com/token"
REQUEST_TIMEOUT = 30.0


@dataclass
class Capacity:
    """One measurement: ``pushes`` requests, how long they took and what they cost the stand-in."""

    standin: str
    mode: str
    pushes: int
    seconds: float
    failures: int
    standin_cpu_us: float  # stand-in CPU (user+system) per push, µs
    client_cpu_us: float  # this process's CPU per push, µs

    @property
    def per_second(self) -> float:
        return self.pushes / self.seconds if self.seconds else 0.0

    def row(self) -> str:
        one_core = 1e6 / self.standin_cpu_us if self.standin_cpu_us else float("inf")
        return (f"| {self.standin} | {self.mode} | {self.pushes} | {self.per_second:,.0f} | "
                f"{self.standin_cpu_us:,.0f} | {one_core:,.0f} | {self.client_cpu_us:,.0f} | {self.failures} |")

    def to_json(self) -> dict:
        return {**asdict(self), "per_second": self.per_second}


def process_cpu(child: Child) -> float:
    """User+system seconds of ``child`` and every process below it."""
    try:
        root = psutil.Process(child.pid)
        total = 0.0
        for proc in [root, *root.children(recursive=True)]:
            try:
                times = proc.cpu_times()
                total += times.user + times.system
            except psutil.NoSuchProcess:
                pass
        return total
    except psutil.NoSuchProcess:
        return 0.0


def _measure(standin: str, mode: str, child: Child, pushes: int, run: Callable[[], int]) -> Capacity:
    cpu0, client0, t0 = process_cpu(child), time.process_time(), time.perf_counter()
    failures = run()
    seconds = time.perf_counter() - t0
    client = time.process_time() - client0
    cpu = process_cpu(child) - cpu0
    child.check_alive()
    return Capacity(standin, mode, pushes, seconds, failures, cpu / pushes * 1e6, client / pushes * 1e6)


def _run_async(make: Callable[[], Awaitable[int]], timeout: float) -> int:
    async def bounded() -> int:
        return await asyncio.wait_for(make(), timeout)

    try:
        return asyncio.run(bounded())
    except TimeoutError:
        raise BenchError(f"load did not finish within {timeout:.0f} s") from None


# -- Web Push ------------------------------------------------------------------


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def vapid_authorization(origin: str, key: ec.EllipticCurvePrivateKey | None = None) -> str:
    """An RFC 8292 ``vapid t=..., k=...`` header for ``origin``, valid 12 h."""
    key = key or ec.generate_private_key(ec.SECP256R1())
    token = jwt.encode({"aud": origin, "exp": int(time.time()) + 12 * 3600, "sub": "mailto:bench@example.com"},
                       key, algorithm="ES256")
    public = key.public_key().public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    return f"vapid t={token}, k={_b64url(public)}"


def webpush_requests(service: WebPushService, distinct: int) -> list[tuple[str, bytes]]:
    """(endpoint, encrypted body) for ``distinct`` fresh subscriptions, encrypted ahead of time."""
    prepared = []
    for subscription in service.subscriptions(distinct):
        body = WebPusher(subscription).encode(PAYLOAD, "aes128gcm")["body"]
        prepared.append((subscription["endpoint"], body))
    return prepared


def measure_webpush(service: WebPushService, pushes: int, connections: int) -> list[Capacity]:
    prepared = webpush_requests(service, min(pushes, 200))
    headers = {"TTL": "3600", "Content-Encoding": "aes128gcm", "Urgency": "normal",
               "Content-Type": "application/octet-stream", "Authorization": vapid_authorization(service.url)}

    def sequential() -> int:
        failures = 0
        with requests.Session() as http:
            http.trust_env = False
            for i in range(pushes):
                endpoint, body = prepared[i % len(prepared)]
                if http.post(endpoint, data=body, headers=headers, timeout=REQUEST_TIMEOUT).status_code != 201:
                    failures += 1
        return failures

    async def concurrent() -> int:
        return await _aiohttp_load(pushes, connections, lambda i: prepared[i % len(prepared)], headers, 201)

    sequential()  # warm-up: connection, caches
    return [
        _measure("webpush", "1 connection, sequential (requests)", service.child, pushes, sequential),
        _measure("webpush", f"{connections} connections (aiohttp)", service.child, pushes,
                 lambda: _run_async(concurrent, 600)),
    ]


async def _aiohttp_load(pushes: int, connections: int, request: Callable[[int], tuple[str, bytes]],
                        headers: dict[str, str], ok_status: int) -> int:
    """``pushes`` POSTs from ``connections`` workers, each on its own keep-alive connection."""
    counter = iter(range(pushes))
    failures = 0
    connector = aiohttp.TCPConnector(limit=connections, force_close=False)
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout, trust_env=False,
                                     skip_auto_headers=("User-Agent",)) as http:

        async def worker() -> None:
            nonlocal failures
            for i in counter:
                url, body = request(i)
                async with http.post(url, data=body, headers=headers) as response:
                    await response.read()
                    if response.status != ok_status:
                        failures += 1

        await asyncio.gather(*(worker() for _ in range(connections)))
    return failures


# -- FCM -----------------------------------------------------------------------


def fcm_access_token(service: FcmService) -> str:
    """An access token from the stand-in's /token, by the service-account JWT-bearer grant."""
    account = service.service_account
    now = int(time.time())
    assertion = jwt.encode({"iss": account["client_email"], "aud": GOOGLE_TOKEN_AUDIENCE, "iat": now,
                            "exp": now + 3600, "scope": FCM_SCOPE},
                           account["private_key"], algorithm="RS256", headers={"kid": account["private_key_id"]})
    response = requests.post(account["token_uri"], timeout=REQUEST_TIMEOUT, data={
        "grant_type": "urn:ietf:params:oauth:grant-type:jwt-bearer", "assertion": assertion})
    if response.status_code != 200:
        raise BenchError(f"FCM stand-in refused the token request: {response.status_code} {response.text[:300]}")
    return response.json()["access_token"]


def measure_fcm(service: FcmService, pushes: int, connections: int) -> list[Capacity]:
    token = fcm_access_token(service)
    project = service.service_account["project_id"]
    url = f"{service.base_url}/v1/projects/{project}/messages:send"
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    bodies = [json.dumps({"message": {
        "token": f"fcm-token-{i}-" + "x" * 120,
        "notification": {"title": "Your shift starts in 30 min", "body": "Open GymOps to view details."},
        "data": {"route": "/schedule"},
        "android": {"priority": "NORMAL", "ttl": "3600s"},
    }}).encode() for i in range(200)]

    def sequential() -> int:
        failures = 0
        with requests.Session() as http:
            http.trust_env = False
            for i in range(pushes):
                if http.post(url, data=bodies[i % len(bodies)], headers=headers, timeout=REQUEST_TIMEOUT).status_code != 200:
                    failures += 1
        return failures

    async def concurrent() -> int:
        return await _aiohttp_load(pushes, connections, lambda i: (url, bodies[i % len(bodies)]), headers, 200)

    sequential()
    return [
        _measure("fcm", "1 connection, sequential (requests)", service.child, pushes, sequential),
        _measure("fcm", f"{connections} connections (aiohttp)", service.child, pushes,
                 lambda: _run_async(concurrent, 600)),
    ]


# -- APNs ----------------------------------------------------------------------


def apns_provider_token(key_pem: str, team_id: str, key_id: str) -> str:
    return jwt.encode({"iss": team_id, "iat": int(time.time())}, key_pem, algorithm="ES256", headers={"kid": key_id})


def measure_apns(service: ApnsService, key_pem: str, team_id: str, key_id: str, pushes: int,
                 streams: int) -> list[Capacity]:
    token = apns_provider_token(key_pem, team_id, key_id)
    headers = {"authorization": f"bearer {token}", "apns-topic": "com.example.app", "apns-push-type": "alert",
               "apns-priority": "10", "apns-expiration": "0"}
    body = json.dumps({"aps": {"alert": {"title": "Your shift starts in 30 min",
                                         "body": "Open GymOps to view details."}}, "route": "/schedule"}).encode()
    tokens = [uuid.uuid4().hex + uuid.uuid4().hex for _ in range(200)]
    context = ssl.create_default_context(cafile=service.ca_path)
    context.set_alpn_protocols(["h2"])

    async def load(concurrency: int) -> int:
        counter = iter(range(pushes))
        failures = 0
        limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
        async with httpx.AsyncClient(http2=True, verify=context, limits=limits, trust_env=False,
                                     timeout=REQUEST_TIMEOUT, base_url=f"https://{service.host}:{service.port}") as http:

            async def worker() -> None:
                nonlocal failures
                for i in counter:
                    response = await http.post(f"/3/device/{tokens[i % len(tokens)]}", content=body, headers=headers)
                    if response.status_code != 200:
                        failures += 1

            await asyncio.gather(*(worker() for _ in range(concurrency)))
        return failures

    _run_async(lambda: load(4), 120)  # warm-up
    return [
        _measure("apns", "1 stream at a time (httpx, HTTP/2)", service.child, pushes, lambda: _run_async(lambda: load(1), 600)),
        _measure("apns", f"{streams} concurrent streams, 1 connection (httpx)", service.child, pushes,
                 lambda: _run_async(lambda: load(streams), 600)),
    ]


# -- runner --------------------------------------------------------------------


def measure_all(procs: Processes, work_dir: Path, pushes: int, connections: int) -> list[Capacity]:
    """Start each stand-in, measure it, stop it; one at a time so they do not compete."""
    results: list[Capacity] = []
    print(f"[standins] Web Push: {pushes} pushes sequentially, then over {connections} connections", flush=True)
    webpush = start_webpush(procs)
    results += measure_webpush(webpush, pushes, connections)
    procs.stop(webpush.child)

    print(f"[standins] FCM: {pushes} sends sequentially, then over {connections} connections", flush=True)
    fcm = start_fcm(procs, work_dir)
    results += measure_fcm(fcm, pushes, connections)
    procs.stop(fcm.child)

    print(f"[standins] APNs: {pushes} pushes one stream at a time, then {connections * 4} concurrent streams", flush=True)
    key = new_apns_key()
    apns = start_apns(procs, [key], work_dir)
    results += measure_apns(apns, key.pem, key.team_id, key.key_id, pushes, connections * 4)
    procs.stop(apns.child)
    return results


def print_table(results: list[Capacity]) -> None:
    print()
    print(f"Stand-in capacity alone ({os.cpu_count()} cores; client and stand-in share them)")
    print()
    print("| stand-in | client | pushes | pushes/s | stand-in CPU µs/push | pushes/s per stand-in core | client CPU µs/push | failures |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for result in results:
        print(result.row())


def run(pushes: int = 3000, connections: int = 8, output: Path | None = None) -> list[Capacity]:
    """Measure every stand-in; print a Markdown table and optionally write JSON to ``output``."""
    install_signal_handlers()
    with tempfile.TemporaryDirectory(prefix="pushq-bench-standins-") as tmp:
        work_dir = Path(tmp)
        with Processes(work_dir / "logs") as procs:
            results = measure_all(procs, work_dir, pushes, connections)
    print_table(results)
    if output is not None:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(json.dumps({"cores": os.cpu_count(), "results": [r.to_json() for r in results]}, indent=2) + "\n")
        print(f"\nwrote {output}")
    failed = [r for r in results if r.failures]
    if failed:
        raise BenchError(f"{sum(r.failures for r in failed)} pushes were refused during the capacity runs")
    return results
