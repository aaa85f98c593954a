"""A Redis Cluster on loopback ports for tests and the bench: Debian's `redis-server`
(installed with apt-get when missing and this is root), N primaries with R replicas each,
AOF on, created with `redis-cli --cluster create`, stopped (and its files removed) on close.

    python -m semcache_server.redis_backend.local_cluster DIR [--port 7100]   # serve until Ctrl-C
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path


def ensure_redis_server() -> str:
    """The path of redis-server, installing Debian's package first where it is missing."""
    found = shutil.which("redis-server")
    if found and shutil.which("redis-cli"):
        return found
    if os.geteuid() != 0:
        raise RuntimeError("redis-server is not installed and this is not root: apt-get install redis-server")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env, stdout=subprocess.DEVNULL)
    subprocess.run(
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "redis-server"],
        check=True, env=env, stdout=subprocess.DEVNULL,
    )
    found = shutil.which("redis-server")
    if not found:
        raise RuntimeError("apt-get installed redis-server but it is not on PATH")
    return found


def free_port_block(count: int, start: int = 17000) -> int:
    """A first port such that it, the next count-1 and their cluster bus ports (+10000) are free."""
    for base in range(start, 30000 - count, count):
        if all(_free(base + i) and _free(base + i + 10000) for i in range(count)):
            return base
    raise RuntimeError("no free block of loopback ports")


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


class LocalCluster:
    def __init__(
        self, directory: Path, *, primaries: int = 3, replicas: int = 1, base_port: int = 0,
        node_timeout_ms: int = 1000, appendfsync: str = "everysec", extra: tuple[str, ...] = (),
    ) -> None:
        self.server = ensure_redis_server()
        self.directory = Path(directory)
        self.count = primaries * (1 + replicas)
        self.replicas = replicas
        self.base_port = base_port or free_port_block(self.count)
        self.node_timeout_ms = node_timeout_ms
        self.appendfsync = appendfsync
        self.extra = extra
        self.processes: dict[int, subprocess.Popen] = {}

    @property
    def ports(self) -> list[int]:
        return [self.base_port + i for i in range(self.count)]

    @property
    def url(self) -> str:
        return "redis://" + ",".join(f"127.0.0.1:{p}" for p in self.ports[:3])

    def start(self) -> LocalCluster:
        for port in self.ports:
            self.start_node(port)
        addresses = [f"127.0.0.1:{p}" for p in self.ports]
        subprocess.run(
            ["redis-cli", "--cluster", "create", *addresses, "--cluster-replicas", str(self.replicas), "--cluster-yes"],
            check=True, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, timeout=60,
        )
        self.wait_ok()
        return self

    def start_node(self, port: int) -> None:
        node_dir = self.directory / str(port)
        node_dir.mkdir(parents=True, exist_ok=True)
        args = [
            self.server, "--port", str(port), "--bind", "127.0.0.1", "--cluster-enabled", "yes",
            "--cluster-config-file", "nodes.conf", "--cluster-node-timeout", str(self.node_timeout_ms),
            "--dir", str(node_dir), "--appendonly", "yes", "--appendfsync", self.appendfsync,
            "--save", "", "--daemonize", "no", "--protected-mode", "no", "--logfile", "redis.log",
            "--maxmemory-policy", "volatile-lfu", *self.extra,
        ]
        self.processes[port] = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.cli(port, "PING", check=False) == "PONG":
                return
            time.sleep(0.05)
        raise RuntimeError(f"redis-server on port {port} did not start; see {node_dir / 'redis.log'}")

    def cli(self, port: int, *command: str, check: bool = True) -> str:
        done = subprocess.run(
            ["redis-cli", "-p", str(port), *command], capture_output=True, text=True, timeout=10, check=False
        )
        if check and done.returncode:
            raise RuntimeError(f"redis-cli -p {port} {' '.join(command)}: {done.stderr.strip()}")
        return done.stdout.strip()

    def wait_ok(self, timeout_seconds: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_seconds
        while time.monotonic() < deadline:
            alive = [p for p in self.ports if self.processes[p].poll() is None]
            if all("cluster_state:ok" in self.cli(p, "CLUSTER", "INFO", check=False) for p in alive) and all(
                "role:master" in info or "master_link_status:up" in info
                for info in (self.cli(p, "INFO", "replication", check=False) for p in alive)
            ):
                return
            time.sleep(0.1)
        raise RuntimeError("the cluster did not reach cluster_state:ok")

    def primaries(self) -> list[int]:
        ports = []
        for port in self.ports:
            if self.processes[port].poll() is None and "role:master" in self.cli(port, "INFO", "replication", check=False):
                ports.append(port)
        return ports

    def primary_for(self, key: str) -> int:
        """The port of the primary that serves this key's slot now."""
        slot = int(self.cli(self.primaries()[0], "CLUSTER", "KEYSLOT", key))
        for port in self.primaries():
            for line in self.cli(port, "CLUSTER", "NODES").splitlines():
                fields = line.split()
                if "myself" not in fields[2]:
                    continue
                for item in fields[8:]:
                    low, _, high = item.partition("-")
                    if low.isdigit() and int(low) <= slot <= int(high or low):
                        return port
        raise RuntimeError(f"no primary serves slot {slot}")

    def used_memory(self, port: int) -> int:
        """used_memory of one node, in bytes."""
        info = self.cli(port, "INFO", "memory").splitlines()
        return int(next(line.split(":")[1] for line in info if line.startswith("used_memory:")))

    def kill(self, port: int) -> None:
        process = self.processes[port]
        process.send_signal(signal.SIGKILL)
        process.wait()

    def stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.terminate()
        for process in self.processes.values():
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self.processes.clear()

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("directory", type=Path)
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # stop the cluster on SIGTERM too, not only Ctrl-C
    with LocalCluster(args.directory, base_port=args.port) as cluster:
        print(f"backend = {cluster.url!r}  (Ctrl-C stops it)", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            signal.pause()


if __name__ == "__main__":
    main()
