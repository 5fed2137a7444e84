"""``grpc``: grpc.aio unary-unary calls carrying raw bytes (no protobuf).

The server registers a generic handler whose methods have no request
deserializer and no response serializer, so handlers see and return bytes;
the client calls ``channel.unary_unary(path)`` without serializers either.
``Hold`` parks a call for the number of milliseconds in its 4-byte request.
Every channel uses a local subchannel pool, so each one is its own
connection (grpc otherwise shares one connection among identical channels).
The server's limit on calls it has not yet handed to the application
(``grpc.server.max_pending_requests``, 1,000 by default) is raised: beyond it
grpc sheds calls as CANCELLED, and the 64×16 load keeps 1,024 in flight.

``--otel-sdk`` configures the OpenTelemetry SDK as callrt's flag of the same
name does (:mod:`bench.otel`) and instruments grpc.aio with
opentelemetry-instrumentation-grpc (``GrpcAioInstrumentorServer`` /
``GrpcAioInstrumentorClient``: a CLIENT and a SERVER span per call; that
package records no metrics).
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import grpc
import grpc.aio

from bench import otel
from bench.common import Address
from bench.systems import Client, System
from bench.tls import SERVER_NAME

__all__ = ("SYSTEM",)

_SERVICE = "bench.Echo"
_MAX_MESSAGE = 64 * 1024 * 1024
_OPTIONS: list[tuple[str, int]] = [
    ("grpc.max_send_message_length", _MAX_MESSAGE),
    ("grpc.max_receive_message_length", _MAX_MESSAGE),
]


async def _echo(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
    return request


async def _hold(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
    await asyncio.sleep(int.from_bytes(request, "big") / 1000)
    return request


def _target(address: Address) -> str:
    if address.is_unix:
        return f"unix:{address.path}"
    host, port = address.host_port
    return f"{host}:{port}"


def _instrument(role: str) -> None:
    """The SDK, and grpc.aio's servers or channels made from now on instrumented by OpenTelemetry's interceptors."""
    from opentelemetry.instrumentation.grpc import GrpcAioInstrumentorClient, GrpcAioInstrumentorServer

    otel.configure(f"grpc {role}")
    instrumentor = GrpcAioInstrumentorServer() if role == "server" else GrpcAioInstrumentorClient()
    if not instrumentor.is_instrumented_by_opentelemetry:  # once per process (a client connects per step)
        instrumentor.instrument()  # patches grpc.aio.server, or grpc.aio.insecure_channel and secure_channel


async def _serve(address: Address, args: argparse.Namespace) -> None:
    if args.otel_sdk:
        _instrument("server")
    handler = grpc.method_handlers_generic_handler(
        _SERVICE,
        {
            "Echo": grpc.unary_unary_rpc_method_handler(_echo),
            "Hold": grpc.unary_unary_rpc_method_handler(_hold),
        },
    )
    options = [*_OPTIONS, ("grpc.server.max_pending_requests", 1 << 16)]
    server = grpc.aio.server(options=options)
    server.add_generic_rpc_handlers((handler,))
    if args.tls_dir is None:
        server.add_insecure_port(_target(address))
    else:
        d: Path = args.tls_dir
        pair = ((d / "server.key").read_bytes(), (d / "server.pem").read_bytes())
        credentials = grpc.ssl_server_credentials(
            [pair], root_certificates=(d / "ca.pem").read_bytes(), require_client_auth=True
        )
        server.add_secure_port(_target(address), credentials)
    await server.start()
    try:
        await server.wait_for_termination()
    finally:
        await server.stop(None)


@asynccontextmanager
async def _connect(address: Address, args: argparse.Namespace) -> AsyncIterator[Client]:
    if args.otel_sdk:
        _instrument("client")
    options: list[tuple[str, int | str]] = [*_OPTIONS, ("grpc.use_local_subchannel_pool", 1)]
    if args.tls_dir is None:
        channel = grpc.aio.insecure_channel(_target(address), options=options)
    else:
        d: Path = args.tls_dir
        credentials = grpc.ssl_channel_credentials(
            root_certificates=(d / "ca.pem").read_bytes(),
            private_key=(d / "client.key").read_bytes(),
            certificate_chain=(d / "client.pem").read_bytes(),
        )
        options.append(("grpc.ssl_target_name_override", SERVER_NAME))
        channel = grpc.aio.secure_channel(_target(address), credentials, options=options)
    async with channel:
        await channel.channel_ready()
        echo = channel.unary_unary(f"/{_SERVICE}/Echo")
        hold = channel.unary_unary(f"/{_SERVICE}/Hold")

        async def park(ms: int) -> bytes:
            reply: bytes = await hold(ms.to_bytes(4, "big"))
            return reply

        yield Client(call=echo, hold=park)


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tls-dir", type=Path, help="mutual TLS with the certificates in DIR (bench/tls.py)")
    parser.add_argument(
        "--otel-sdk",
        action="store_true",
        help="configure the OpenTelemetry SDK (bench/otel.py) and instrument grpc.aio with "
        "opentelemetry-instrumentation-grpc",
    )


SYSTEM = System(name="grpc", serve=_serve, connect=_connect, loops=("uvloop", "asyncio"), add_arguments=_add_arguments)
