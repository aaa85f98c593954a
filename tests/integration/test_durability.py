"""Acknowledged Stores survive kill -9 of the server process."""

from __future__ import annotations

import signal
import threading

from semcache.client import Client
from tests.helpers import free_port, start_server_process

PARTITION = {"namespace": "durable", "model": "m", "prompt_version": "v1"}


def test_kill_9_right_after_acknowledged_stores_loses_none(tmp_path):
    data_dir = tmp_path / "data"
    port = free_port()
    process = start_server_process(data_dir, port)
    acknowledged: dict[str, str] = {}
    lock = threading.Lock()
    stop = threading.Event()

    def writer(n: int) -> None:
        with Client(f"127.0.0.1:{port}", timeout_seconds=30) as client:
            i = 0
            while not stop.is_set():
                query = f"writer {n} asks question number {i} about shipping"
                try:
                    entry_id = client.store(PARTITION, query, f"answer {n}-{i}").entry_id
                except Exception:
                    return  # the server was killed mid-call: not acknowledged
                with lock:
                    acknowledged[query] = entry_id
                i += 1

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    try:
        while True:  # kill while stores are still in flight
            with lock:
                if len(acknowledged) >= 150:
                    break
            threads[0].join(0.05)
        process.send_signal(signal.SIGKILL)
        process.wait(10)
    finally:
        stop.set()
        for t in threads:
            t.join()
        if process.poll() is None:
            process.kill()
    assert len(acknowledged) >= 150

    process = start_server_process(data_dir, port)
    try:
        with Client(f"127.0.0.1:{port}", timeout_seconds=30) as client:
            lost = [q for q, entry_id in acknowledged.items() if client.lookup(PARTITION, q).entry_id != entry_id]
            assert lost == []
            assert client.stats().entries >= len(acknowledged)
            # The semantic tier was rebuilt from LMDB too.
            some_query = next(iter(acknowledged))
            result = client.lookup(PARTITION, some_query.replace("asks", "is asking"))
            assert result.hit and not result.exact
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0
