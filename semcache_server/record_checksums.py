"""Entry record checksums: a damaged record is recognised on read, never served."""

from __future__ import annotations

import struct
import zlib

from semcache_server.v1.records_pb2 import EntryRecord

# An entry record is stored as its bytes (crc32 unset) + field 14 as fixed32: the tag
# byte, then the CRC-32 of those bytes, little-endian. Parsing the whole sets crc32.
_CRC_TAG = bytes([(14 << 3) | 5])
_CRC = struct.Struct("<I")


def encode_entry(record: EntryRecord) -> bytes:
    """The record's stored bytes: its serialization (crc32 unset), then its checksum."""
    record.ClearField("crc32")
    body = record.SerializeToString()
    return body + _CRC_TAG + _CRC.pack(zlib.crc32(body))


def checksum_ok(raw: bytes) -> bool:
    """Whether a stored record ends with the checksum of the bytes before it."""
    if len(raw) < 5 or raw[-5] != _CRC_TAG[0]:
        return False
    return zlib.crc32(memoryview(raw)[:-5]) == _CRC.unpack_from(raw, len(raw) - 4)[0]
