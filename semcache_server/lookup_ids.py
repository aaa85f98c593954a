"""Lookup ids that say, signed, what a Lookup served, so Feedback on a hit or an audit
works after a restart and on any frontend of the same storage.

A lookup_id is base64url of

    version u8 | flags u8 | partition digest 8 | issued_at u32 (Unix seconds) |
    entry_id u64 (0: a miss) | similarity f32 | question digest 16 | nonce 8 |
    [audited: lookups u32 | eligible u32 | audit_entry_id u64] | HMAC-SHA256 16

under a key the storage keeps (LMDB meta, or the Redis cluster's meta hash), made once
per cache. The server trusts an id only if its MAC checks out, it is at most
`feedback_log_seconds` old and its partition is the Feedback's. What it cannot carry
(the missed query's text, vector and request key, which an alias needs) stays in the
in-memory lookup log (semcache_server/feedback.py); past it, the Feedback sends them
again, and the question digest here proves they are the missed Lookup's. A verdict counts once per id: its
MAC is claimed in the storage until the id expires (CacheStorage.claim_verdict).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
import struct
import time
from collections.abc import Callable

from semcache_server.feedback import LoggedLookup
from semcache_server.partition import PartitionKey

VERSION = 1
KEY_BYTES = 32
MAC_BYTES = 16
_HIT, _AUDITED, _HAS_QUESTION, _VERIFIED = 1, 2, 4, 8
_CORE = struct.Struct("<BB8sIQf16s8s")
_AUDIT = struct.Struct("<IIQ")
# The longest lookup_id this module writes, in characters (longer ones are not read).
MAX_CHARS = (_CORE.size + _AUDIT.size + MAC_BYTES) * 4 // 3 + 4


def new_key() -> bytes:
    return secrets.token_bytes(KEY_BYTES)


class LookupIds:
    def __init__(self, key: bytes, max_age_seconds: float, clock: Callable[[], float] = time.time) -> None:
        if len(key) < 16:
            raise ValueError("a lookup id key needs at least 16 bytes")
        self._key = key
        self.max_age_seconds = max_age_seconds
        self._clock = clock

    def issue(self, lookup: LoggedLookup) -> str:
        flags = (_HIT if lookup.entry_id else 0) | (_AUDITED if lookup.audit_counts is not None else 0)
        flags |= _HAS_QUESTION if lookup.digest else 0
        flags |= _VERIFIED if lookup.audit_verified else 0
        payload = _CORE.pack(
            VERSION, flags, lookup.key.digest()[:8], int(self._clock()) & 0xFFFFFFFF, lookup.entry_id,
            lookup.similarity, lookup.digest.ljust(16, b"\0")[:16], secrets.token_bytes(8),
        )
        if lookup.audit_counts is not None:
            payload += _AUDIT.pack(*lookup.audit_counts, lookup.audit_entry_id)
        return _encoded(payload + self._mac(payload))

    def read(self, lookup_id: str, key: PartitionKey) -> tuple[LoggedLookup, bytes, float] | None:
        """The Lookup an id names, its MAC (what a verdict claims) and when it expires
        (Unix seconds); None when it is not one of ours, too old, or of another partition."""
        if len(lookup_id) > MAX_CHARS or not lookup_id.isascii():
            return None
        try:
            raw = base64.urlsafe_b64decode(lookup_id + "=" * (-len(lookup_id) % 4))
        except (binascii.Error, ValueError):
            return None
        if _encoded(raw) != lookup_id:  # one spelling per id (base64's spare bits, stray characters)
            return None
        payload, mac = raw[:-MAC_BYTES], raw[-MAC_BYTES:]
        if len(payload) not in (_CORE.size, _CORE.size + _AUDIT.size) or not hmac.compare_digest(mac, self._mac(payload)):
            return None
        version, flags, digest, issued_at, entry_id, similarity, question, _ = _CORE.unpack_from(payload)
        audited = len(payload) > _CORE.size
        if (version != VERSION or bool(flags & _AUDITED) != audited or bool(flags & _HIT) != bool(entry_id)
                or bool(flags & _VERIFIED) > (audited and bool(entry_id))):
            return None
        age_seconds = self._clock() - issued_at
        if not -60 <= age_seconds <= self.max_age_seconds or digest != key.digest()[:8]:
            return None
        audit_counts, audit_entry_id = None, 0
        if audited:
            lookups, eligible, audit_entry_id = _AUDIT.unpack_from(payload, _CORE.size)
            audit_counts = (lookups, eligible)
        lookup = LoggedLookup(
            key, "", question if flags & _HAS_QUESTION else b"", entry_id, similarity, b"", None,
            float(issued_at), audit_counts=audit_counts, audit_entry_id=audit_entry_id,
            audit_verified=bool(flags & _VERIFIED), from_id=True,
        )
        return lookup, mac, issued_at + self.max_age_seconds

    def _mac(self, payload: bytes) -> bytes:
        return hmac.new(self._key, payload, hashlib.sha256).digest()[:MAC_BYTES]


def _encoded(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")
