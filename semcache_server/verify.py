"""`semcache verify [--repair]`: check every entry record of a stopped server's data dir,
and drop the damaged ones (with every index row pointing at them), keeping every intact
entry."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from semcache_server.errors import ConfigError
from semcache_server.salvage import salvage
from semcache_server.store import Store


def add_verify_parser(commands: argparse._SubParsersAction) -> None:
    verify = commands.add_parser(
        "verify", help="check a data dir's records (server stopped); --repair drops damaged entries",
    )
    verify.add_argument("--data-dir", required=True)
    verify.add_argument("--repair", action="store_true", help="drop damaged entries, keep every intact one")
    verify.add_argument(
        "--salvage-to", metavar="NEW_DIR",
        help="where LMDB's own pages are damaged (the server and --repair cannot open the file): copy every "
        "intact entry into this new data dir, then start the server on it",
    )
    verify.set_defaults(run=cmd_verify)


def cmd_verify(args: argparse.Namespace) -> int:
    if args.salvage_to:
        print(json.dumps(salvage(args.data_dir, args.salvage_to), indent=2))
        return 0
    data_file = Path(args.data_dir) / "cache.lmdb" / "data.mdb"
    if not data_file.is_file():
        raise ConfigError(f"no semcache data in {args.data_dir!r} (no {data_file})")
    # The data dir's lock: a running server holds it, and verify refuses (ConfigError).
    # Verify writes little: a map the size of the file, and some room, is enough.
    store = Store(args.data_dir, max_map_bytes=data_file.stat().st_size + (64 << 20), sync_writes=True)
    try:
        with store.read() as txn:
            report: dict[str, object] = dict(store.verify_entries(txn))
        damaged = set(store.corrupt_entry_ids)
        report["damaged_entry_ids"] = sorted(damaged)[:100]
        if args.repair and damaged:
            with store.write() as txn:
                report["dropped"] = store.repair(txn, damaged)
        print(json.dumps(report, indent=2))
    finally:
        store.close()
    return 1 if damaged and not args.repair else 0
