"""How each platform's adapter is built from the settings: the registry's ``adapter_factory`` entries.

:data:`shared.platforms.PLATFORMS` names these functions by path, so the domain
never imports worker code; :class:`workers.runtime.WorkerRuntime` calls them once
per worker process. Every adapter honours the push deadline:
``Settings.deliver_time_limits`` assume it.
"""

from __future__ import annotations

import importlib

from shared.config import Settings
from shared.platforms import PLATFORMS
from shared.receipts import ReceiptTokens, derive_key
from workers.adapters.apns import ApnsAdapter
from workers.adapters.base import Adapter
from workers.adapters.fcm import FcmAdapter
from workers.adapters.webpush import WebPushAdapter


def web_push(s: Settings) -> Adapter:
    return WebPushAdapter(s.vendor_connect_timeout, s.push_deadline, concurrency=s.push_concurrency,
                          allow_http_loopback=s.allow_http_endpoints, extra_hosts=s.webpush_extra_hosts,
                          receipts=ReceiptTokens(derive_key(s.receipt_key, s.token_hash_key)))


def apns(s: Settings) -> Adapter:
    return ApnsAdapter(s.vendor_connect_timeout, s.vendor_read_timeout, host=s.apns_host, port=s.apns_port,
                       ca_file=s.apns_ca_file, deadline=s.push_deadline)


def fcm(s: Settings) -> Adapter:
    return FcmAdapter(s.vendor_connect_timeout, s.vendor_read_timeout, base_url=s.fcm_base_url,
                      max_workers=s.push_concurrency, deadline=s.push_deadline)


def build_adapters(settings: Settings) -> dict[str, Adapter]:
    """One adapter per registered platform, by platform name."""
    adapters: dict[str, Adapter] = {}
    for name, spec in PLATFORMS.items():
        module, _, function = spec.adapter_factory.partition(":")
        adapters[name] = getattr(importlib.import_module(module), function)(settings)
    return adapters
