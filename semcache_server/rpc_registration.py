"""Registering services with gRPC so that requests reach them as raw bytes and are
parsed here: a message that does not parse as its request type is INVALID_ARGUMENT.

With the generated registration, grpcio parses the bytes itself and answers a bad
message with INTERNAL "Exception deserializing request!", logs a traceback, and
leaks memory per such message (measured with a bare grpcio server too). Here grpcio
only moves bytes; the parse and its error are ours.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import grpc
from google.protobuf import message as protobuf_message
from google.protobuf import message_factory
from google.protobuf.descriptor import ServiceDescriptor


def _parse(message_class: Any, raw: bytes, context: grpc.ServicerContext) -> Any:
    request = message_class()
    try:
        request.ParseFromString(raw)
    except (protobuf_message.DecodeError, ValueError) as e:
        context.abort(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"the request is not a valid {message_class.DESCRIPTOR.full_name} message: {str(e)[:200]}",
        )
    return request


def _implemented(method: Callable[..., Any], name: str) -> Callable[..., Any]:
    """The method; where it is a generated stub's NotImplementedError (grpcio-health has no
    List), UNIMPLEMENTED with a message instead of a logged traceback per call."""

    def call(request: Any, context: grpc.ServicerContext) -> Any:
        try:
            return method(request, context)
        except NotImplementedError:
            context.abort(grpc.StatusCode.UNIMPLEMENTED, f"{name} is not implemented by this server")

    return call


def _handler(method: Callable[..., Any], descriptor: Any) -> grpc.RpcMethodHandler:
    method = _implemented(method, descriptor.full_name)
    request_class = message_factory.GetMessageClass(descriptor.input_type)
    serialize = message_factory.GetMessageClass(descriptor.output_type).SerializeToString
    if descriptor.client_streaming:
        def parsed_stream(raw_requests: Iterator[bytes], context: grpc.ServicerContext) -> Iterator[Any]:
            for raw in raw_requests:
                yield _parse(request_class, raw, context)

        def stream_handler(raw_requests: Iterator[bytes], context: grpc.ServicerContext) -> Any:
            return method(parsed_stream(raw_requests, context), context)

        factory = grpc.stream_stream_rpc_method_handler if descriptor.server_streaming else grpc.stream_unary_rpc_method_handler
        return factory(stream_handler, request_deserializer=None, response_serializer=serialize)

    def handler(raw: bytes, context: grpc.ServicerContext) -> Any:
        return method(_parse(request_class, raw, context), context)

    factory = grpc.unary_stream_rpc_method_handler if descriptor.server_streaming else grpc.unary_unary_rpc_method_handler
    return factory(handler, request_deserializer=None, response_serializer=serialize)


def register(server: grpc.Server, service: ServiceDescriptor, servicer: object) -> None:
    """Serve every method of `service` from the servicer's method of the same name,
    each taking (request, context) as with the generated registration."""
    handlers = {m.name: _handler(getattr(servicer, m.name), m) for m in service.methods}
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service.full_name, handlers),))
    server.add_registered_method_handlers(service.full_name, handlers)
