"""The part of the LMDB map that Stores leave free for deletes.

LMDB copies every page a delete touches before it frees the old ones, and pages freed
while a reader still holds an older snapshot are not reusable until it ends. A map that
Stores fill to its last page can then delete nothing (the delete fails MAP_FULL), so
eviction can never make room again and every later Store is refused. Stores therefore
stop short of the ceiling by a reserve: 1/32 of the map, at least 128 pages, counted in
live pages (what the named databases hold), so that the pages between the live data and
the ceiling are free, or free once the readers of the moment end.
"""

from __future__ import annotations

from collections.abc import Sequence

import lmdb

RESERVE_FRACTION = 32
RESERVE_MIN_PAGES = 128
# Pages no named database counts: the two meta pages and the main database's.
_UNCOUNTED_PAGES = 3


class MapReserve:
    def __init__(self, env: lmdb.Environment, named_dbs: Sequence[lmdb._Database], max_map_bytes: int) -> None:
        self._named_dbs = tuple(named_dbs)
        map_pages = max_map_bytes // env.stat()["psize"]
        self.store_ceiling_pages = (
            map_pages - max(RESERVE_MIN_PAGES, map_pages // RESERVE_FRACTION) - _UNCOUNTED_PAGES
        )

    def live_pages(self, txn: lmdb.Transaction) -> int:
        """Pages the named databases hold as of this transaction (its own writes included)."""
        total = 0
        for db in self._named_dbs:
            stat = txn.stat(db)
            total += stat["branch_pages"] + stat["leaf_pages"] + stat["overflow_pages"]
        return total

    def would_break(self, txn: lmdb.Transaction) -> bool:
        """True when committing this (Store) transaction would eat into the reserve."""
        return self.live_pages(txn) > self.store_ceiling_pages
