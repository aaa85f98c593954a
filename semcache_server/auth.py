"""Bearer tokens, each allowed a list of namespaces (or every namespace)."""

from __future__ import annotations

import hmac
from collections.abc import Iterable, Sequence

from semcache_server.errors import ConfigError, PermissionDeniedError, UnauthenticatedError

ALL_NAMESPACES = "*"


class Grant:
    """What one token may touch."""

    def __init__(self, namespaces: Iterable[str]) -> None:
        names = set(namespaces)
        self.all = ALL_NAMESPACES in names
        self.namespaces = frozenset(names - {ALL_NAMESPACES})

    def allows(self, namespace: str) -> bool:
        return self.all or namespace in self.namespaces

    def require(self, namespace: str) -> None:
        if not self.allows(namespace):
            raise PermissionDeniedError(f"this token is not allowed namespace {namespace!r}")


FULL_ACCESS = Grant([ALL_NAMESPACES])


def parse_tokens(spec: str) -> dict[str, Grant]:
    """'tokenA=ns1,ns2;tokenB=*' -> {token: Grant}. Raises ConfigError on a malformed spec."""
    grants: dict[str, Grant] = {}
    for item in filter(None, (part.strip() for part in spec.split(";"))):
        token, sep, namespaces = item.partition("=")
        token = token.strip()
        names = [n.strip() for n in namespaces.split(",") if n.strip()]
        if not sep or not token or not names:
            raise ConfigError("auth_tokens: each item must be TOKEN=NAMESPACE[,NAMESPACE...] or TOKEN=*")
        if token in grants:
            raise ConfigError("auth_tokens: a token is listed twice")
        grants[token] = Grant(names)
    return grants


class Authenticator:
    """Maps the `authorization: Bearer <token>` call metadata to a Grant."""

    def __init__(self, grants: dict[str, Grant]) -> None:
        self._grants = list(grants.items())

    def grant_for(self, metadata: Sequence[tuple[str, str | bytes]]) -> Grant:
        header = next((value for key, value in metadata if key.lower() == "authorization"), None)
        if header is None:
            raise UnauthenticatedError("this server needs 'authorization: Bearer <token>' call metadata")
        if isinstance(header, bytes):
            header = header.decode("latin-1")
        scheme, _, token = header.strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise UnauthenticatedError("the authorization metadata must be 'Bearer <token>'")
        presented = token.strip().encode()
        match = None
        for known, grant in self._grants:  # compare with every token, in constant time each
            if hmac.compare_digest(known.encode(), presented):
                match = grant
        if match is None:
            raise UnauthenticatedError("unknown token")
        return match
