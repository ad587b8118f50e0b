"""Settings are parsed by their declared types, and a type without a parser is refused, not passed through."""

from __future__ import annotations

import dataclasses
import typing

import pytest

from shared.config import ConfigError, Settings, _parser_for


def test_every_declared_setting_has_a_parser():
    hints = typing.get_type_hints(Settings)
    for f in dataclasses.fields(Settings):
        assert callable(_parser_for(hints[f.name])), f.name


def test_values_come_out_typed():
    s = Settings.from_env({"PUSHQ_PUSH_DEADLINE_SECONDS": "3.5", "PUSHQ_ALLOW_HTTP_ENDPOINTS": "yes",
                           "JWT_ALGORITHMS": "HS256, HS512", "PUSHQ_DELIVERY_CHUNK_SIZE": "50"})
    assert (s.push_deadline_seconds, s.allow_http_endpoints, s.jwt_algorithms, s.delivery_chunk_size) == (
        3.5, True, ("HS256", "HS512"), 50)


def test_a_bad_value_names_its_variable():
    with pytest.raises(ConfigError, match="PUSHQ_DELIVERY_CHUNK_SIZE"):
        Settings.from_env({"PUSHQ_DELIVERY_CHUNK_SIZE": "many"})


def test_a_type_without_a_parser_fails_loudly():
    with pytest.raises(TypeError, match="no parser"):
        _parser_for(dict[str, int])
