"""Fuzz every RPC of a `semcache serve` process: random bytes, valid messages with bits
flipped, and valid messages with extreme values. Counts answers by status code, samples
the server's RSS, and checks its log for tracebacks.

    python bench/fuzz.py [--requests 20000] [--json bench/results/fuzz.json] [--quick]

Targets (issue 21): no INTERNAL or UNKNOWN, no crash or hang (every call answers within
its deadline), no traceback in the log, RSS flat (within 10%) after the first fifth:
rss_growth_after_warmup is the last sample against the first one after it (the valid
Stores among the requests add entries, so a little growth is data, not a leak).
"""

from __future__ import annotations

import collections
import math
import random
import tempfile
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2

from semcache_server.bench.harness import bench_parser, free_port, rss_anon_bytes, start_server, stop_server, write_report
from semcache_server.v1 import semcache_pb2 as pb

DIMENSION = 16
SERVICES = [
    pb.DESCRIPTOR.services_by_name["SemanticCache"],
    health_pb2.DESCRIPTOR.services_by_name["Health"],
    reflection_pb2.DESCRIPTOR.services_by_name["ServerReflection"],
]


def valid_messages(rng: random.Random) -> dict[str, list[bytes]]:
    """A few well-formed requests per method, extreme values among them."""
    part = pb.Partition(namespace="fuzz", model="m")
    vector = [rng.uniform(-1, 1) for _ in range(DIMENSION)]
    extremes = [float("nan"), float("inf"), -0.0, 3.4e38, 1e-45, 1.7e308]
    lookups = [
        pb.LookupRequest(partition=part, query="what is the fuzz"),
        pb.LookupRequest(partition=part, query="q", embedding=vector, min_similarity=0.5),
        pb.LookupRequest(partition=part, query="x" * 9000),
        pb.LookupRequest(partition=part, embedding=[rng.choice(extremes) for _ in range(DIMENSION)]),
        pb.LookupRequest(partition=pb.Partition(namespace="n" * 300), query="q"),
        pb.LookupRequest(partition=part, query="q", verifier_min_score=math.nan, verifier_band_low=5.0),
        pb.LookupRequest(partition=part, query="\ud800"[:0] + "\u0000\u202e\uffff"),
        pb.LookupRequest(partition=part, query="q", lease=True, lease_wait_ms=2**32 - 1,
                         cache_control=pb.CacheControl(max_age_seconds=2**32 - 1, refresh=True)),
        pb.LookupRequest(partition=part, query="q", key=pb.RequestKey(
            settings={"tools": "[" * 5000, "": "\u0000"}, context=[pb.Turn(role="user", content="x" * 100)] * 2000)),
    ]
    stores = [
        pb.StoreRequest(partition=part, query=f"fuzz {rng.random()}", response=b"r", embedding=vector),
        pb.StoreRequest(partition=part, query="q", response=b"r", embedding=vector, cost=1.7e308, ttl_seconds=2**31 - 1),
        pb.StoreRequest(partition=part, query="q", response=b"x" * 2_000_000, embedding=vector),
        pb.StoreRequest(partition=part, query="q", embedding=vector, metadata={str(i): "v" for i in range(100)}),
    ]
    return {
        "Lookup": [m.SerializeToString() for m in lookups],
        "Store": [m.SerializeToString() for m in stores],
        "StoreBatch": [pb.StoreBatchRequest(items=stores[:2] * 3).SerializeToString()],
        "Delete": [pb.DeleteRequest(partition=part, entry_id=e).SerializeToString()
                   for e in ("1", "18446744073709551616", "\u0661", "-1", "")],
        "Invalidate": [
            pb.InvalidateRequest(partition=part, metadata_match={"k": "v"}).SerializeToString(),
            pb.InvalidateRequest(partition=pb.Partition(namespace="nobody"), whole_namespace=True).SerializeToString(),
        ],
        "Stats": [
            pb.StatsRequest().SerializeToString(),
            pb.StatsRequest(partition=part, max_partitions=2**31 - 1).SerializeToString(),
        ],
        "Feedback": [pb.FeedbackRequest(partition=part, lookup_id=i, correct=False, should_match_entry_id=e).SerializeToString()
                     for i, e in (("", ""), ("x" * 5000, "18446744073709551616"), ("abc", "\u0661"))],
        "ReleaseLease": [pb.ReleaseLeaseRequest(partition=part, lease_id=i).SerializeToString() for i in ("", "x" * 5000)],
        "SetNamespaceThreshold": [pb.SetNamespaceThresholdRequest(namespace="fuzz", min_similarity=2.0).SerializeToString()],
        "Check": [health_pb2.HealthCheckRequest(service="x" * 5000).SerializeToString()],
        "Watch": [health_pb2.HealthCheckRequest(service="nonexistent").SerializeToString()],
        "List": [health_pb2.HealthListRequest().SerializeToString()] if hasattr(health_pb2, "HealthListRequest") else [b""],
        "ServerReflectionInfo": [reflection_pb2.ServerReflectionRequest(list_services="").SerializeToString(),
                                 reflection_pb2.ServerReflectionRequest(file_containing_symbol="no.such").SerializeToString()],
    }


def mutated(raw: bytes, rng: random.Random) -> bytes:
    data = bytearray(raw or b"\x00")
    for _ in range(rng.randint(1, 8)):
        i = rng.randrange(len(data))
        data[i] ^= 1 << rng.randrange(8)
    if rng.random() < 0.2:
        data = data[: rng.randrange(len(data) + 1)]
    return bytes(data)


def call(channel: grpc.Channel, service: str, method, raw: bytes) -> str:  # type: ignore[no-untyped-def]
    path = f"/{service}/{method.name}"
    try:
        if method.client_streaming:
            list(channel.stream_stream(path)(iter([raw]), timeout=10))
        elif method.server_streaming:
            # Watch streams until cancelled: take its first answer, then cancel.
            stream = channel.unary_stream(path)(raw, timeout=10)
            next(stream, None)
            stream.cancel()
        else:
            channel.unary_unary(path)(raw, timeout=10)
    except grpc.RpcError as e:
        code = e.code()
        return "CANCELLED(by us)" if code == grpc.StatusCode.CANCELLED and method.server_streaming else code.name
    return "OK"


def main() -> None:
    parser = bench_parser(__doc__)
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.quick:
        args.requests = 600
    rng = random.Random(args.seed)
    valid = valid_messages(rng)
    work = Path(tempfile.mkdtemp(prefix="semcache-fuzz-"))
    address = f"127.0.0.1:{free_port()}"
    server = start_server(
        address, work / "data", "--embedding-model", "none", "--embedding-dimension", str(DIMENSION),
        "--max-map-bytes", str(64 << 20), log_path=work / "server.log",
    )
    methods = [(s.full_name, m) for s in SERVICES for m in s.methods]
    codes: collections.Counter[str] = collections.Counter()
    by_kind: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    rss: list[tuple[int, int]] = []
    crashed = None
    try:
        with grpc.insecure_channel(address, options=[("grpc.max_send_message_length", 8 << 20)]) as channel:
            for i in range(args.requests):
                service, method = methods[i % len(methods)]
                kind = ("random", "mutated", "valid")[rng.randrange(3)]
                if kind == "random":
                    raw = rng.randbytes(rng.choice((1, 7, 64, 1024, 32_000)))
                elif kind == "mutated":
                    raw = mutated(rng.choice(valid[method.name]), rng)
                else:
                    raw = rng.choice(valid[method.name])
                code = call(channel, service, method, raw)
                codes[code] += 1
                by_kind[kind][code] += 1
                if i % max(1, args.requests // 20) == 0:
                    if server.poll() is not None:
                        crashed = server.returncode
                        break
                    rss.append((i, rss_anon_bytes(server.pid)))
        rss.append((args.requests, rss_anon_bytes(server.pid)))
    finally:
        exit_code = stop_server(server)
    log = (work / "server.log").read_text(errors="replace")
    warm = [b for i, b in rss if i >= args.requests // 5]
    growth = (warm[-1] - warm[0]) / warm[0] if warm else 0.0  # the end against the first sample after warm-up
    spread = (max(warm) - min(warm)) / min(warm) if warm else 0.0  # includes the entries valid Stores add
    result = {
        "requests": args.requests,
        "codes": dict(codes.most_common()),
        "codes_by_kind": {k: dict(v.most_common()) for k, v in sorted(by_kind.items())},
        "internal_or_unknown": codes["INTERNAL"] + codes["UNKNOWN"],
        "deadline_exceeded": codes["DEADLINE_EXCEEDED"],
        "tracebacks_in_log": log.count("Traceback"),
        "crashed": crashed,
        "server_exit_code": exit_code,
        "rss_mib": [(i, round(b / (1 << 20), 1)) for i, b in rss],
        "rss_growth_after_warmup": round(growth, 4),
        "rss_spread_after_warmup": round(spread, 4),
    }
    write_report(result, args.json)
    failures = [
        name for name, bad in (
            ("INTERNAL/UNKNOWN answers", result["internal_or_unknown"]),
            ("tracebacks in the log", result["tracebacks_in_log"]),
            ("a crash", crashed is not None),
            ("calls that hung to their deadline", result["deadline_exceeded"]),
        ) if bad
    ]
    if failures:
        raise SystemExit("fuzz found " + ", ".join(failures))


if __name__ == "__main__":
    main()
