"""The `semcache` command: serve, talk to a running server, and benchmark."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

from semcache_server.errors import ConfigError
from semcache_server.settings import Settings, load_settings

DEFAULT_ADDRESS = "127.0.0.1:50051"


def _add_setting_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per scalar setting: --data-dir for data_dir, and so on."""
    parser.add_argument("--config", help="TOML config file (also SEMCACHE_CONFIG)")
    for field in dataclasses.fields(Settings):
        if field.name == "namespaces":
            continue
        flag = "--" + field.name.replace("_", "-")
        parser.add_argument(flag, dest=field.name, default=None, metavar=field.name.upper(),
                            help=f"default: {field.default!r}; env SEMCACHE_{field.name.upper()}")


def _settings_from(args: argparse.Namespace) -> Settings:
    flags = {f.name: getattr(args, f.name, None) for f in dataclasses.fields(Settings) if f.name != "namespaces"}
    return load_settings(flags=flags, config_path=args.config)


def _add_client_flags(parser: argparse.ArgumentParser, *, partition: bool = True) -> None:
    parser.add_argument("--address", default=os.environ.get("SEMCACHE_ADDRESS", DEFAULT_ADDRESS),
                        help=f"server address (env SEMCACHE_ADDRESS; default {DEFAULT_ADDRESS})")
    parser.add_argument("--token", default=os.environ.get("SEMCACHE_TOKEN"), help="bearer token (env SEMCACHE_TOKEN)")
    parser.add_argument("--timeout-seconds", type=float, default=30.0)
    parser.add_argument("--tls-ca", default=os.environ.get("SEMCACHE_TLS_CA"),
                        help="PEM file of the CA that signed the server's certificate: connect with TLS")
    if partition:
        parser.add_argument("--namespace", default="")
        parser.add_argument("--model", default="")
        parser.add_argument("--prompt-version", default="")
        parser.add_argument("--system-prompt", default="")


def _client(args: argparse.Namespace):
    from semcache_server.client import Client

    return Client(args.address, timeout_seconds=args.timeout_seconds, token=args.token,
                  root_certificates=_read_ca(args))


def _read_ca(args: argparse.Namespace) -> bytes | None:
    if not args.tls_ca:
        return None
    with open(args.tls_ca, "rb") as f:
        return f.read()


def _partition(args: argparse.Namespace) -> dict[str, str]:
    return {
        "namespace": args.namespace,
        "model": args.model,
        "prompt_version": args.prompt_version,
        "system_prompt": args.system_prompt,
    }


def _print_message(message: Any) -> None:
    """The message as JSON, field names as in the .proto; a UTF-8 `response` is shown as text."""
    from google.protobuf import json_format

    data = json_format.MessageToDict(
        message, always_print_fields_with_no_presence=True, preserving_proto_field_name=True
    )
    if isinstance(getattr(message, "response", None), bytes):
        try:
            data["response"] = message.response.decode("utf-8")
        except UnicodeDecodeError:
            data["response_base64"] = data.pop("response")
    print(json.dumps(data, indent=2, ensure_ascii=False))


def _metadata(pairs: Sequence[str]) -> dict[str, str]:
    result = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"--metadata takes KEY=VALUE, got {pair!r}")
        result[key] = value
    return result


def cmd_serve(args: argparse.Namespace) -> int:
    from semcache_server.logs import configure_logging
    from semcache_server.server import serve

    settings = _settings_from(args)
    configure_logging(settings.log_level, settings.log_format)
    serve(settings)
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    settings = _settings_from(args)
    print(json.dumps(settings.redacted(), indent=2, default=str))
    return 0


def cmd_lookup(args: argparse.Namespace) -> int:
    with _client(args) as client:
        _print_message(client.lookup(_partition(args), args.query, min_similarity=args.min_similarity))
    return 0


def cmd_store(args: argparse.Namespace) -> int:
    with _client(args) as client:
        _print_message(client.store(
            _partition(args), args.query, args.response,
            ttl_seconds=args.ttl_seconds, metadata=_metadata(args.metadata), cost=args.cost,
        ))
    return 0


def cmd_delete(args: argparse.Namespace) -> int:
    with _client(args) as client:
        print(json.dumps({"deleted": client.delete(_partition(args), args.entry_id)}))
    return 0


def cmd_invalidate(args: argparse.Namespace) -> int:
    with _client(args) as client:
        removed = client.invalidate(
            _partition(args), all_versions=args.all_versions, whole_namespace=args.whole_namespace,
            metadata_match=_metadata(args.metadata_match),
        )
        print(json.dumps({"removed": removed}))
    return 0


def cmd_stats(args: argparse.Namespace) -> int:
    with _client(args) as client:
        partition = _partition(args) if args.namespace else None
        _print_message(client.stats(partition, max_partitions=args.max_partitions))
    return 0


def cmd_health(args: argparse.Namespace) -> int:
    """Exit 0 only when the server reports SERVING."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    ca = _read_ca(args)
    if ca is None:
        channel = grpc.insecure_channel(args.address)
    else:
        channel = grpc.secure_channel(args.address, grpc.ssl_channel_credentials(root_certificates=ca))
    with channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=args.timeout_seconds
            )
        except grpc.RpcError as e:
            print(f"not serving: {e.code().name}: {e.details()}", file=sys.stderr)
            return 1
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    print(status)
    return 0 if reply.status == health_pb2.HealthCheckResponse.SERVING else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="semcache", description="A semantic cache for LLM responses, over gRPC.")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the server")
    _add_setting_flags(serve)
    serve.set_defaults(run=cmd_serve)

    config = commands.add_parser("config", help="print the effective configuration")
    _add_setting_flags(config)
    config.set_defaults(run=cmd_config)

    lookup = commands.add_parser("lookup", help="look a query up on a running server")
    _add_client_flags(lookup)
    lookup.add_argument("query")
    lookup.add_argument("--min-similarity", type=float, default=None)
    lookup.set_defaults(run=cmd_lookup)

    store = commands.add_parser("store", help="store a response on a running server")
    _add_client_flags(store)
    store.add_argument("query")
    store.add_argument("response")
    store.add_argument("--ttl-seconds", type=int, default=0)
    store.add_argument("--metadata", action="append", default=[], metavar="KEY=VALUE")
    store.add_argument("--cost", type=float, default=0.0)
    store.set_defaults(run=cmd_store)

    delete = commands.add_parser("delete", help="delete one entry")
    _add_client_flags(delete)
    delete.add_argument("entry_id")
    delete.set_defaults(run=cmd_delete)

    invalidate = commands.add_parser(
        "invalidate", help="drop a partition, a model's versions, a namespace, or entries by metadata"
    )
    _add_client_flags(invalidate)
    invalidate.add_argument("--all-versions", action="store_true", help="every version of --namespace + --model")
    invalidate.add_argument("--whole-namespace", action="store_true", help="every partition of --namespace")
    invalidate.add_argument("--metadata-match", action="append", default=[], metavar="KEY=VALUE",
                            help="only entries whose metadata has this pair (repeatable)")
    invalidate.set_defaults(run=cmd_invalidate)

    stats = commands.add_parser("stats", help="print counters (of a namespace with --namespace)")
    _add_client_flags(stats)
    stats.add_argument("--max-partitions", type=int, default=0, help="partitions to list (0: the server's default, 1000)")
    stats.set_defaults(run=cmd_stats)

    health_cmd = commands.add_parser("health", help="exit 0 when the server is SERVING")
    _add_client_flags(health_cmd, partition=False)
    health_cmd.set_defaults(run=cmd_health)

    from semcache_server.bench.cli import add_bench_parser
    from semcache_server.verifier.cli import add_train_parser
    from semcache_server.verify import add_verify_parser

    add_bench_parser(commands)
    add_train_parser(commands)
    add_verify_parser(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except ConfigError as e:
        print(f"semcache: configuration error: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # grpc.RpcError and friends: one line, no traceback
        import grpc

        if isinstance(e, grpc.RpcError):
            print(f"semcache: {e.code().name}: {e.details()}", file=sys.stderr)
            return 1
        raise


if __name__ == "__main__":
    sys.exit(main())
