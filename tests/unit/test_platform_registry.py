"""The platform registry is the one list: the schema, the queues and the adapters agree with it."""

from __future__ import annotations

import importlib

from broker.queues import ALL_QUEUES, PLATFORM_QUEUES
from shared.models import Platform
from shared.platforms import PLATFORM_NAMES, PLATFORMS
from shared.services.stats import VENDORS
from shared.vendor_payloads import LIMITS


def test_the_schema_stores_exactly_the_registered_platforms():
    assert [p.value for p in Platform] == list(PLATFORM_NAMES)


def test_every_platform_has_its_own_queue_and_the_broker_declares_it():
    assert {name: spec.queue for name, spec in PLATFORMS.items()} == PLATFORM_QUEUES
    assert len(set(PLATFORM_QUEUES.values())) == len(PLATFORMS)
    assert set(PLATFORM_QUEUES.values()) <= set(ALL_QUEUES)


def test_stats_and_payload_limits_read_the_registry():
    assert VENDORS == {"web": "Web Push", "ios": "APNs", "android": "FCM"}
    assert {name: spec.max_payload_bytes for name, spec in PLATFORMS.items()} == LIMITS


def test_every_adapter_factory_resolves_to_an_adapter_of_its_platform():
    for name, spec in PLATFORMS.items():
        module, _, function = spec.adapter_factory.partition(":")
        factory = getattr(importlib.import_module(module), function)
        assert callable(factory), name
        built = factory.__annotations__.get("return")
        assert built == "Adapter", f"{spec.adapter_factory} must return an Adapter"


def test_token_shapes():
    assert PLATFORMS["ios"].token_pattern.fullmatch("a" * 64)
    assert not PLATFORMS["android"].token_pattern.fullmatch("short")
    assert PLATFORMS["web"].token_pattern is None  # a subscription, parsed as JSON
