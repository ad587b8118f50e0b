"""Start the vendor stand-ins as separate processes through their own CLIs.

The benchmarks run each stand-in in its own process, as an operator would, so
its CPU is not counted in the process being measured and the worker reaches it
over a real socket. Trust is set up the way another process has to: the APNs
stand-in is given the provider key with ``--key``, the FCM stand-in writes a
service account it trusts with ``--write-service-account``, and Web Push
subscriptions are created over the stand-in's HTTP control API.
"""

from __future__ import annotations

import json
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from bench.procs import BenchError, Child, Processes, free_port, port_open, wait_until

STARTUP_TIMEOUT = 30.0


@dataclass(frozen=True)
class WebPushService:
    child: Child
    url: str  # origin, the VAPID aud

    def subscriptions(self, count: int, application_server_key: str | None = None,
                      timeout: float = 600.0) -> list[dict]:
        """``count`` browser-side subscriptions from the stand-in (``{endpoint, keys}``), over keep-alive."""
        body = json.dumps({"application_server_key": application_server_key} if application_server_key else {})
        deadline = time.monotonic() + timeout
        out: list[dict] = []
        with requests.Session() as http:
            http.trust_env = False
            for _ in range(count):
                if time.monotonic() > deadline:
                    raise BenchError(f"creating {count} Web Push subscriptions took over {timeout:.0f} s")
                response = http.post(f"{self.url}/_standin/subscriptions", data=body, timeout=10,
                                     headers={"Content-Type": "application/json"})
                if response.status_code != 201:
                    raise BenchError(f"Web Push stand-in refused a subscription: {response.status_code} {response.text[:200]}")
                created = response.json()
                out.append({"endpoint": created["endpoint"], "keys": created["keys"]})
        return out


@dataclass(frozen=True)
class ApnsKey:
    team_id: str
    key_id: str
    pem: str


@dataclass(frozen=True)
class ApnsService:
    child: Child
    host: str
    port: int
    ca_path: str


@dataclass(frozen=True)
class FcmService:
    child: Child
    base_url: str
    service_account: dict


def new_apns_key() -> ApnsKey:
    """An APNs token-auth key (.p8 PEM) with a random 10-character key id."""
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode()
    return ApnsKey("TEAM123456", uuid.uuid4().hex[:10].upper(), pem)


def start_webpush(procs: Processes, name: str = "standin-webpush", extra_args: tuple[str, ...] = ()) -> WebPushService:
    port = free_port()
    child = procs.start(name, [sys.executable, "-m", "standins.webpush", "--port", str(port), *extra_args])
    wait_until("the Web Push stand-in to listen", lambda: _alive(child) and port_open(port), STARTUP_TIMEOUT,
               on_timeout=child.log_tail)
    return WebPushService(child, f"http://127.0.0.1:{port}")


def start_apns(procs: Processes, keys: list[ApnsKey], work_dir: Path, name: str = "standin-apns",
               extra_args: tuple[str, ...] = ()) -> ApnsService:
    port = free_port()
    cert_dir = work_dir / "apns-certs"
    args: list[str] = []
    for key in keys:
        path = work_dir / f"AuthKey_{key.key_id}.p8"
        path.write_text(key.pem)
        path.chmod(0o600)
        args += ["--key", f"{key.team_id}:{key.key_id}:{path}"]
    child = procs.start(name, [sys.executable, "-m", "standins.apns", "--port", str(port),
                               "--cert-dir", str(cert_dir), *args, *extra_args])
    wait_until("the APNs stand-in to listen", lambda: _alive(child) and "CA certificate to trust" in _read(child),
               STARTUP_TIMEOUT, on_timeout=child.log_tail)
    return ApnsService(child, "127.0.0.1", port, str(cert_dir / "ca.pem"))


def start_fcm(procs: Processes, work_dir: Path, project: str = "pushq-bench", name: str = "standin-fcm",
              extra_args: tuple[str, ...] = ()) -> FcmService:
    port = free_port()
    account_path = work_dir / "fcm-service-account.json"
    account_path.unlink(missing_ok=True)
    child = procs.start(name, [sys.executable, "-m", "standins.fcm", "--port", str(port), "--project", project,
                               "--write-service-account", str(account_path), *extra_args])
    wait_until("the FCM stand-in to listen", lambda: _alive(child) and "listening on" in _read(child),
               STARTUP_TIMEOUT, on_timeout=child.log_tail)
    return FcmService(child, f"http://127.0.0.1:{port}", json.loads(account_path.read_text()))


def _alive(child: Child) -> bool:
    child.check_alive()
    return True


def _read(child: Child) -> str:
    try:
        return child.log_path.read_text(errors="replace")
    except OSError:
        return ""
