"""Settings of the redis backend: the URL, what it refuses, and that its password never shows."""

from __future__ import annotations

import pytest

from semcache_server.errors import ConfigError
from semcache_server.partition import PartitionKey
from semcache_server.redis_backend.connection import parse_backend, redact
from semcache_server.redis_backend.keys import PartitionKeys
from semcache_server.settings import NamespaceSettings, Settings, load_settings


def test_the_url_names_every_node_and_the_credentials():
    address = parse_backend("redis://app:p%40ss@10.0.0.1:7000,10.0.0.2:7001")
    assert address.nodes == (("10.0.0.1", 7000), ("10.0.0.2", 7001))
    assert (address.username, address.password, address.tls) == ("app", "p@ss", False)
    assert parse_backend("rediss://h:1").tls
    assert parse_backend("redis://h:1").password is None


@pytest.mark.parametrize("bad", ["redis://", "redis://host", "redis://host:port", "http://h:1", "redis://h:1,,h:2"])
def test_a_bad_url_is_a_config_error(bad):
    with pytest.raises(ConfigError):
        load_settings({"backend": bad}, env={})


def test_the_password_is_redacted_everywhere_it_is_shown():
    settings = load_settings({"backend": "redis://app:hunter2@h:1,h:2"}, env={})
    assert "hunter2" not in str(settings.redacted())
    assert settings.redacted()["backend"] == "redis://app:<redacted>@h:1,h:2"
    assert redact("redis://h:1") == "redis://h:1"
    with pytest.raises(ConfigError) as caught:
        load_settings({"backend": "redis://app:hunter2@nohost"}, env={})
    assert "hunter2" not in str(caught.value)


def test_entry_budgets_are_refused_with_the_redis_backend():
    with pytest.raises(ConfigError, match=r"max_bytes.*maxmemory"):
        load_settings({"backend": "redis://h:1", "max_bytes": 1000}, env={})
    settings = Settings(backend="redis://h:1", namespaces={"a": NamespaceSettings(max_entries=5)})
    with pytest.raises(ConfigError, match=r"namespaces\.a\.max_entries"):
        settings.with_overrides()
    assert load_settings({"max_bytes": 1000}, env={}).max_bytes == 1000  # the local backend keeps them


def test_a_wait_must_end_before_the_socket_timeout():
    with pytest.raises(ConfigError, match="redis_wait_timeout_ms"):
        load_settings({"backend": "redis://h:1", "redis_wait_replicas": 1, "redis_wait_timeout_ms": 3000}, env={})
    assert load_settings({"backend": "redis://h:1", "redis_wait_replicas": 1}, env={}).redis_wait_replicas == 1


def test_every_key_of_a_partition_shares_one_hash_tag_and_partitions_do_not():
    keys = PartitionKeys.of(PartitionKey("ns", "m", "v"))
    names = [keys.meta, keys.ids, keys.vectors, keys.exact, keys.log, keys.entry(7), keys.old("x"), keys.olds]
    assert {name[name.index("{"):name.index("}") + 1] for name in names} == {keys.tag}
    assert PartitionKeys.of(PartitionKey("ns", "m", "v2")).tag != keys.tag
