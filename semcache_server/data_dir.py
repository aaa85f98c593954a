"""The data dir on disk: one server's lock on it, and what is checked of its files
before LMDB maps them (a truncated file would be SIGBUS, not an error)."""

from __future__ import annotations

import fcntl
import logging
import os
from pathlib import Path

import lmdb

from semcache_server.errors import ConfigError

log = logging.getLogger("semcache")


def lock_data_dir(path: Path) -> int:
    """Hold an exclusive lock on the data dir (semcache.lock, which names the holder's
    pid) until close or process exit; the kernel drops it when the process dies,
    kill -9 included, so a crash leaves nothing stale. Two servers on one data dir
    would each keep their own indexes, budgets and counters over one LMDB file and
    disagree about what is stored: the second is refused at start."""
    fd = os.open(path / "semcache.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise ConfigError(
            f"data dir {str(path)!r} is in use by another semcache server (pid {holder}); "
            "each server needs a data dir of its own"
        ) from None
    except OSError:
        os.close(fd)
        raise
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def check_not_truncated(env: lmdb.Environment, data_file: Path) -> None:
    """A data file shorter than its own header says (a copy cut short, a full disk
    during a restore) would kill the process with SIGBUS on the first read past its
    end: refuse it first, naming the file. Reads only the meta pages at its start."""
    needed = (int(env.info()["last_pgno"]) + 1) * int(env.stat()["psize"])
    size = data_file.stat().st_size
    if size < needed:
        raise ConfigError(
            f"the data file {str(data_file)!r} is truncated: it holds {size} bytes and its header says "
            f"{needed}. Restore it from a backup, or move the data dir aside to start with an empty cache"
        )


def damaged_data_error(data_dir: str, error: BaseException) -> ConfigError:
    """What start-up says when LMDB or a record reports damage below the entries' checksums."""
    return ConfigError(
        f"the data in {data_dir!r} is damaged ({type(error).__name__}: {str(error)[:200]}). With the server "
        f"stopped, `semcache verify --data-dir {data_dir} --repair` drops damaged entries; where LMDB's own "
        f"pages are damaged, `semcache verify --data-dir {data_dir} --salvage-to NEW_DIR` copies every intact "
        "entry into a new data dir to start on; or restore the data dir from a backup"
    )


# Present while a server starts: left behind, it says the last start died on the way
# (LMDB aborts the process on some damaged pages, with no chance to say which file).
STARTING_MARKER = "starting"


def begin_start(path: Path) -> bool:
    """Mark a start as under way; True when the previous one never finished."""
    marker = path / STARTING_MARKER
    unfinished = marker.exists()
    try:
        marker.write_text(f"{os.getpid()}\n")
    except OSError:  # a full volume: start without the marker (it only serves a diagnosis)
        marker.unlink(missing_ok=True)
    return unfinished


def finish_start(path: Path) -> None:
    (path / STARTING_MARKER).unlink(missing_ok=True)


def aborted_start_error(data_dir: str) -> ConfigError:
    return ConfigError(
        f"the data in {data_dir!r} is damaged: LMDB aborts reading it (the previous start died there too). "
        f"With the server stopped, `semcache verify --data-dir {data_dir} --salvage-to NEW_DIR` copies every "
        "intact entry into a new data dir to start on; or restore the data dir from a backup"
    )


def warn_if_map_exceeds_volume(path: str | Path, max_map_bytes: int) -> None:
    stat = os.statvfs(path)
    volume_bytes = stat.f_blocks * stat.f_frsize
    if max_map_bytes > volume_bytes:
        log.warning(
            "max_map_bytes (%d) is larger than the data volume (%d bytes): the cache will evict "
            "when the volume fills, leaving no room for anything else on it; set max_map_bytes "
            "below the volume's size",
            max_map_bytes, volume_bytes,
        )
