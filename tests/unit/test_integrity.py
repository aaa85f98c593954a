"""Damaged records are never served: a flipped bit in a stored record fails its
checksum, reads as absent, is counted and logged, and is dropped; older records
written before checksums still read; `semcache verify --repair` keeps every intact entry."""

from __future__ import annotations

import logging

from semcache_server.cache import SemanticCache
from semcache_server.cli import main
from semcache_server.partition import PartitionKey
from semcache_server.settings import Settings
from tests.helpers import POLICY_DIMENSION, unit_vector

KEY = PartitionKey("ns", "m", "v")


def _settings(tmp_path) -> Settings:
    return Settings(data_dir=str(tmp_path / "data"), embedding_model="none", embedding_dimension=POLICY_DIMENSION)


def _response(i: int) -> bytes:
    return f"RESP-{i:05d}-".encode() + bytes([65 + i % 26]) * 200


def _filled(tmp_path, count: int = 60) -> Settings:
    settings = _settings(tmp_path)
    cache = SemanticCache(settings, None)
    for i in range(count):
        cache.store(KEY, f"question {i}", _response(i), embedding=unit_vector(i))
    cache.close()
    return settings


def _flip_inside_responses(tmp_path, which: list[int]) -> None:
    path = tmp_path / "data" / "cache.lmdb" / "data.mdb"
    data = bytearray(path.read_bytes())
    for i in which:
        at, flipped = data.find(_response(i)), 0
        while at >= 0:  # every copy: LMDB's free pages may hold stale ones beside the live record
            data[at + 40] ^= 0x04  # one bit inside the response
            flipped += 1
            at = data.find(_response(i), at + 1)
        assert flipped
    path.write_bytes(bytes(data))


def test_a_flipped_bit_is_never_served_and_the_entry_is_dropped(tmp_path, caplog):
    settings = _filled(tmp_path)
    damaged = [3, 17, 42]
    _flip_inside_responses(tmp_path, damaged)
    with caplog.at_level(logging.ERROR, logger="semcache"):
        cache = SemanticCache(settings, None)  # recovery reads every record: the damaged ones are seen here
    assert sum("is damaged" in r.message for r in caplog.records) == 3
    for i in range(60):
        found = cache.lookup(KEY, f"question {i}")
        if i in damaged:
            assert not found.hit  # never a garbled answer
        else:
            assert found.hit and found.response == _response(i)
    assert cache.stats().damaged_entries == 3
    assert cache.sweep_expired() == 0 and cache.storage.maintenance.drop_damaged() == 0  # type: ignore[attr-defined]
    assert cache.check_consistency() == []
    cache.close()
    reopened = SemanticCache(settings, None)
    assert reopened.stats().entries == 57 and reopened.stats().damaged_entries == 0 and reopened.check_consistency() == []
    reopened.close()


def test_records_written_before_checksums_still_read(tmp_path):
    settings = _filled(tmp_path, count=5)
    cache = SemanticCache(settings, None)
    store = cache.storage.store  # type: ignore[attr-defined]
    with store.write() as txn:  # entry 1 as an earlier version wrote it: no checksum trailer
        record = store.get_entry(txn, 1)
        record.ClearField("crc32")
        txn.put((1).to_bytes(8, "big"), record.SerializeToString(), db=store._entries)
        store.put_meta(txn, "checksums_from_entry_id", "2")
    cache.close()
    reopened = SemanticCache(settings, None)
    assert reopened.lookup(KEY, "question 0").response == _response(0)
    assert reopened.stats().damaged_entries == 0
    reopened.close()


def test_verify_reports_and_repair_keeps_every_intact_entry(tmp_path, capsys):
    settings = _filled(tmp_path)
    _flip_inside_responses(tmp_path, [5, 6])
    data_dir = str(tmp_path / "data")
    assert main(["verify", "--data-dir", data_dir]) == 1
    assert '"damaged": 2' in capsys.readouterr().out
    assert main(["verify", "--data-dir", data_dir, "--repair"]) == 0
    assert main(["verify", "--data-dir", data_dir]) == 0
    cache = SemanticCache(settings, None)
    assert cache.stats().entries == 58 and cache.check_consistency() == []
    assert all(cache.lookup(KEY, f"question {i}").hit for i in range(60) if i not in (5, 6))
    cache.close()
