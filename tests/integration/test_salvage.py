"""`semcache verify --salvage-to`: a data dir whose LMDB pages are damaged (the server
refuses it) is copied, every intact entry kept, into a new one the server starts on."""

from __future__ import annotations

import json
import subprocess
import sys

from semcache_server.cache import SemanticCache
from semcache_server.partition import PartitionKey
from semcache_server.settings import Settings
from tests.helpers import POLICY_DIMENSION, unit_vector

KEY = PartitionKey("ns", "m", "")
COUNT = 400


def _settings(data_dir) -> Settings:
    return Settings(data_dir=str(data_dir), embedding_model="none", embedding_dimension=POLICY_DIMENSION, sync_writes=False)


def _semcache(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "semcache_server", *args], capture_output=True, text=True, timeout=120)


def test_salvage_keeps_every_intact_entry_of_a_file_lmdb_cannot_walk(tmp_path):
    source = tmp_path / "data"
    cache = SemanticCache(_settings(source), None)
    for i in range(COUNT):
        cache.store(KEY, f"question {i}", f"RESP-{i:05d}-".encode() + b"z" * 600, embedding=unit_vector(i), cost=1.0)
    assert cache.lookup(KEY, "question 7").hit
    cache.close()
    path = source / "cache.lmdb" / "data.mdb"
    data = bytearray(path.read_bytes())
    zeroed = set()
    for i in (100, 250):  # zero the pages holding these records: leaf pages of the entries table
        at = data.find(f"RESP-{i:05d}-".encode())
        while at >= 0:
            zeroed.add(at // 4096)
            at = data.find(f"RESP-{i:05d}-".encode(), at + 1)
    for page in zeroed:
        data[page * 4096:(page + 1) * 4096] = bytes(4096)
    path.write_bytes(bytes(data))
    lost_on_pages = {i for i in range(COUNT) if data.find(f"RESP-{i:05d}-".encode()) < 0}
    assert 2 <= len(lost_on_pages) < COUNT // 10

    refused = _semcache("verify", "--data-dir", str(source))
    assert "Traceback" not in refused.stderr

    out = tmp_path / "salvaged"
    result = _semcache("verify", "--data-dir", str(source), "--salvage-to", str(out))
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout)
    assert report["entries_kept"] >= COUNT * 0.9, report

    salvaged = SemanticCache(_settings(out), None)
    try:
        assert salvaged.check_consistency() == []
        assert salvaged.stats().entries == report["entries_kept"]
        missing = set()
        for i in range(COUNT):
            found = salvaged.lookup(KEY, f"question {i}")
            if found.hit:
                assert found.response == f"RESP-{i:05d}-".encode() + b"z" * 600, i  # intact, never garbled
            else:
                missing.add(i)
        assert lost_on_pages <= missing
        # What else is missing sat on the zeroed leaf pages (ids are stored in order):
        # everything away from them came back. (Stale copies in LMDB's free pages keep
        # some markers in the file, so the zeroed pages' exact contents are not known.)
        assert all(min(abs(i - 100), abs(i - 250)) <= 12 for i in missing), sorted(missing)
        stored = salvaged.store(KEY, "a new question", b"new", embedding=unit_vector(9999))
        assert int(stored.entry_id) > COUNT  # ids are never reused
    finally:
        salvaged.close()


def test_salvage_refuses_a_target_that_holds_data(tmp_path):
    source = tmp_path / "data"
    SemanticCache(_settings(source), None).close()
    result = _semcache("verify", "--data-dir", str(source), "--salvage-to", str(source))
    assert result.returncode == 2 and "already holds semcache data" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_file_lmdb_aborts_on_is_a_clear_error_at_the_next_start(tmp_path):
    """LMDB aborts the process (a C assertion) on some damaged pages: the start that hits
    one dies, and the next start checks the file in a child process and says what to do."""
    source = tmp_path / "data"
    cache = SemanticCache(_settings(source), None)
    for i in range(COUNT):
        cache.store(KEY, f"question {i}", f"RESP-{i:05d}-".encode() + b"z" * 600, embedding=unit_vector(i))
    cache.close()
    path = source / "cache.lmdb" / "data.mdb"
    data = bytearray(path.read_bytes())
    at = data.find(b"RESP-00150-")
    while at >= 0:
        data[at // 4096 * 4096:(at // 4096 + 1) * 4096] = bytes(4096)
        at = data.find(b"RESP-00150-", at + 1)
    path.write_bytes(bytes(data))
    serve = ["serve", "--listen", "127.0.0.1:0", "--data-dir", str(source), "--embedding-model", "none",
             "--embedding-dimension", str(POLICY_DIMENSION)]
    first = _semcache(*serve)
    assert first.returncode != 0
    second = first if first.returncode == 2 else _semcache(*serve)  # the first died inside LMDB (SIGABRT)
    assert second.returncode == 2, (first.returncode, second.returncode, second.stderr[-2000:])
    assert "is damaged" in second.stderr and "--salvage-to" in second.stderr
    assert "Traceback" not in second.stderr
