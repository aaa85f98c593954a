"""Partition identity: (namespace, model, version)."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json

from semcache_server.errors import InvalidArgumentError

DEFAULT_NAMESPACE = "default"
MAX_NAME_BYTES = 256
# Prefix of versions derived from a system prompt, so they cannot be mistaken
# for a prompt_version a user chose.
SYSTEM_PROMPT_VERSION_PREFIX = "sp-"


@dataclasses.dataclass(frozen=True, order=True)
class PartitionKey:
    """Entries match only within one partition."""

    namespace: str
    model: str
    version: str

    @classmethod
    def resolve(
        cls, namespace: str = "", model: str = "", prompt_version: str = "", system_prompt: str = ""
    ) -> PartitionKey:
        """version = prompt_version, else a stable hash of system_prompt, else ""."""
        if prompt_version:
            version = prompt_version
        elif system_prompt:
            digest = hashlib.sha256(system_prompt.encode("utf-8")).hexdigest()[:16]
            version = SYSTEM_PROMPT_VERSION_PREFIX + digest
        else:
            version = ""
        key = cls(namespace or DEFAULT_NAMESPACE, model, version)
        key.validate()
        return key

    def validate(self) -> None:
        for field, value in (("namespace", self.namespace), ("model", self.model), ("prompt_version", self.version)):
            size = len(value.encode("utf-8", "surrogatepass"))
            if size > MAX_NAME_BYTES:
                raise InvalidArgumentError(
                    f"partition.{field} is {size} bytes; the limit is {MAX_NAME_BYTES}"
                )
            if "\x00" in value:
                raise InvalidArgumentError(f"partition.{field} must not contain NUL characters")

    def digest(self) -> bytes:
        """A fixed-size key for the LMDB name index (names can exceed LMDB's 511-byte keys)."""
        return _digest(self.namespace, self.model, self.version)

    def __str__(self) -> str:
        return f"{self.namespace}/{self.model}/{self.version}"


@functools.lru_cache(maxsize=4096)
def _digest(namespace: str, model: str, version: str) -> bytes:
    """PartitionKey.digest, remembered: each request builds its key anew, and a Lookup
    needs the digest more than once (the name index, its lookup id)."""
    names = json.dumps([namespace, model, version], ensure_ascii=False)
    return hashlib.sha256(names.encode("utf-8", "surrogatepass")).digest()
