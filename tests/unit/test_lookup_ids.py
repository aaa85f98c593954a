"""Signed lookup ids (semcache_server/lookup_ids.py): what they carry, and what they refuse."""

from __future__ import annotations

from semcache_server.feedback import LoggedLookup
from semcache_server.lookup_ids import MAX_CHARS, LookupIds, new_key
from semcache_server.partition import PartitionKey

KEY = PartitionKey("app", "m", "v1")


def _lookup(entry_id: int = 7, audit: tuple[int, int] | None = None, digest: bytes = b"q" * 16) -> LoggedLookup:
    return LoggedLookup(KEY, "the query", digest, entry_id, 0.93, b"", None, 0.0, audit_counts=audit,
                        audit_entry_id=9 if audit else 0)


def test_an_id_carries_what_a_hit_or_an_audit_served():
    now = [1_000_000.0]
    ids = LookupIds(new_key(), 3600, clock=lambda: now[0])
    verified = _lookup(audit=(5, 5))
    verified.audit_verified = True  # an audited hit the verifier served
    for lookup in (_lookup(), _lookup(entry_id=0, audit=(120, 80)), _lookup(digest=b""), verified):
        lookup_id = ids.issue(lookup)
        assert len(lookup_id) <= MAX_CHARS
        read = ids.read(lookup_id, KEY)
        assert read is not None
        got, mac, expires_at = read
        assert (got.key, got.entry_id, got.digest, got.audit_counts, got.audit_entry_id, got.audit_verified) == (
            KEY, lookup.entry_id, lookup.digest, lookup.audit_counts, lookup.audit_entry_id, lookup.audit_verified,
        )
        assert abs(got.similarity - 0.93) < 1e-6 and got.from_id and got.query == "" and got.request_key is None
        assert len(mac) == 16 and expires_at == 1_000_000 + 3600


def test_each_id_is_new_even_for_the_same_lookup():
    ids = LookupIds(new_key(), 3600)
    assert len({ids.issue(_lookup()) for _ in range(100)}) == 100


def test_a_tampered_foreign_old_or_misplaced_id_reads_as_none():
    now = [1_000_000.0]
    ids = LookupIds(new_key(), 60, clock=lambda: now[0])
    lookup_id = ids.issue(_lookup())
    assert LookupIds(new_key(), 60, clock=lambda: now[0]).read(lookup_id, KEY) is None  # another cache's key
    assert ids.read(lookup_id, PartitionKey("app", "m", "v2")) is None
    for bad in (lookup_id[:-1], lookup_id[:10], "", "!!!!", "é" * 20, "A" * (MAX_CHARS + 1)):
        assert ids.read(bad, KEY) is None
    for i in range(len(lookup_id)):  # every single-character change
        changed = lookup_id[:i] + ("B" if lookup_id[i] == "A" else "A") + lookup_id[i + 1:]
        assert ids.read(changed, KEY) is None or changed == lookup_id
    audited = ids.issue(_lookup(entry_id=0, audit=(1, 1)))  # 82 bytes: its last character has spare bits
    assert ids.read(audited[:-1] + chr(ord(audited[-1]) ^ 1), KEY) is None
    now[0] += 61
    assert ids.read(lookup_id, KEY) is None
