"""Pure pieces: normalization, partition identity, settings precedence and errors."""

from __future__ import annotations

import pytest

from semcache_server.errors import ConfigError, InvalidArgumentError
from semcache_server.normalize import normalize_query
from semcache_server.partition import PartitionKey
from semcache_server.settings import load_settings


@pytest.mark.parametrize(
    "text,expected",
    [
        ("How do I return an item?", "how do i return an item"),
        ("  HOW   do\tI\nreturn an item ?!  ", "how do i return an item"),
        ("Ｈｏｗ ｄｏ I return？", "how do i return"),
        ("Straße", "strasse"),
        ("what is 2+2?", "what is 2+2"),
        ("is port 22 open", "is port 22 open"),
        ("...", ""),
    ],
)
def test_normalize_query(text, expected):
    assert normalize_query(text) == expected


def test_normalization_keeps_meaningful_differences():
    assert normalize_query("is port 22 open") != normalize_query("is port 22 closed")
    assert normalize_query("call f(x)") == "call f(x)"


def test_partition_version_resolution():
    assert PartitionKey.resolve().namespace == "default"
    assert PartitionKey.resolve(prompt_version="v3", system_prompt="x").version == "v3"
    a = PartitionKey.resolve(system_prompt="You are terse.")
    assert a == PartitionKey.resolve(system_prompt="You are terse.")
    assert a.version.startswith("sp-") and a != PartitionKey.resolve(system_prompt="You are kind.")
    assert PartitionKey.resolve(namespace="a", model="m").version == ""
    with pytest.raises(InvalidArgumentError, match="namespace"):
        PartitionKey.resolve(namespace="x" * 300)


def test_settings_precedence_flags_over_env_over_file_over_defaults(tmp_path):
    config = tmp_path / "semcache.toml"
    config.write_text('min_similarity = 0.8\nlisten = "127.0.0.1:7000"\ndefault_ttl_seconds = 60\n'
                      '[namespaces.support]\nmin_similarity = 0.75\nmax_entries = 10\n')
    env = {"SEMCACHE_MIN_SIMILARITY": "0.85", "SEMCACHE_LISTEN": "127.0.0.1:7001"}
    settings = load_settings(flags={"listen": "127.0.0.1:7002"}, env=env, config_path=config)
    assert settings.listen == "127.0.0.1:7002"
    assert settings.min_similarity == 0.85
    assert settings.default_ttl_seconds == 60
    assert settings.for_namespace("support", "min_similarity") == 0.75
    assert settings.for_namespace("other", "min_similarity") == 0.85
    assert settings.namespace("support").max_entries == 10
    assert load_settings(env={}).min_similarity == 0.92


def test_config_file_from_env(tmp_path):
    config = tmp_path / "c.toml"
    config.write_text("max_entries = 5\n")
    assert load_settings(env={"SEMCACHE_CONFIG": str(config)}).max_entries == 5


@pytest.mark.parametrize(
    "kwargs,key",
    [
        ({"env": {"SEMCACHE_MIN_SIMILARITY": "high"}}, "SEMCACHE_MIN_SIMILARITY"),
        ({"env": {"SEMCACHE_MIN_SIMILARITY": "1.5"}}, "min_similarity"),
        ({"env": {"SEMCACHE_SYNC_WRITES": "maybe"}}, "SEMCACHE_SYNC_WRITES"),
        ({"env": {"SEMCACHE_MAX_ENTRIES": "-1"}}, "max_entries"),
        ({"env": {"SEMCACHE_GRPC_WORKERS": "2.5"}}, "SEMCACHE_GRPC_WORKERS"),
        ({"flags": {"data_dirr": "x"}, "env": {}}, "data_dirr"),
        ({"env": {"SEMCACHE_LISTEN": "127.0.0.1:99999"}}, "listen"),  # gRPC would serve on 34463
        ({"env": {"SEMCACHE_LISTEN": "localhost"}}, "listen"),
        ({"env": {"SEMCACHE_METRICS_LISTEN": "0.0.0.0:metrics"}}, "metrics_listen"),
        ({"env": {"SEMCACHE_METRICS_LISTEN": "unix:/tmp/m.sock"}}, "metrics_listen"),  # HTTP over TCP only
        ({"env": {"SEMCACHE_MAX_MAP_BYTES": "10"}}, "max_map_bytes"),
        ({"env": {"SEMCACHE_UNCERTIFIED_MIN_SIMILARITY": "-1.5"}}, "uncertified_min_similarity"),
        ({"env": {"SEMCACHE_DISTRUSTED_MIN_SIMILARITY": "2"}}, "distrusted_min_similarity"),
    ],
)
def test_bad_settings_name_the_key(kwargs, key):
    with pytest.raises(ConfigError, match=key):
        load_settings(**kwargs)


@pytest.mark.parametrize("listen", ["127.0.0.1:0", "0.0.0.0:65535", "[::1]:50051", ":50051", "unix:/run/semcache.sock"])
def test_listen_addresses_grpc_serves_on_are_accepted(listen):
    assert load_settings(env={"SEMCACHE_LISTEN": listen}).listen == listen


@pytest.mark.parametrize(
    "toml,key",
    [
        ("min_similarty = 0.9\n", "min_similarty"),
        ('min_similarity = "x"\n', "min_similarity"),
        ("[namespaces.a]\nttl = 3\n", "namespaces.a.ttl"),
        ("[namespaces.a]\nmin_similarity = 2.0\n", "namespaces.a.min_similarity"),
        ("not toml at all [", "not valid TOML"),
    ],
)
def test_bad_config_file_names_the_key(tmp_path, toml, key):
    config = tmp_path / "c.toml"
    config.write_text(toml)
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_settings(env={}, config_path=config)
