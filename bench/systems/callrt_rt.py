"""``callrt``: the runtime under test, serving a one-method echo component.

Its flags map onto :class:`callrt.call.ServerOptions` and
:class:`callrt.call.ClientOptions`, so each mechanism (inline handlers, write
flattening, optimistic spinning, the transport) can be measured on and off;
a flag left out keeps the library default.
"""

from __future__ import annotations

import argparse
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio

from bench import otel
from bench.common import Address
from bench.systems import Client, System
from callrt import call, component, inline, tls

__all__ = ("SYSTEM", "Echo")


@component(name="bench.Echo")
class Echo:
    """Echoes bytes; ``hold`` parks a call to measure per-call server memory."""

    @inline  # the recommended shape for a small pure function: served on the event loop
    def echo(self, data: bytes) -> bytes:
        return data

    async def aecho(self, data: bytes) -> bytes:
        return data

    def techo(self, data: bytes) -> bytes:  # a plain def: served from a worker thread
        return data

    async def hold(self, ms: int) -> int:
        await anyio.sleep(ms / 1000)
        return ms


# (flag, option field, type, which side)
_FLAGS: tuple[tuple[str, str, type, str], ...] = (
    ("--inline-handler-duration", "inline_handler_duration", float, "server"),
    ("--server-write-flatten-limit", "write_flatten_limit", int, "server"),
    ("--server-transport", "transport", str, "server"),
    ("--client-write-flatten-limit", "write_flatten_limit", int, "client"),
    ("--optimistic-spin-duration", "optimistic_spin_duration", float, "client"),
    ("--client-transport", "transport", str, "client"),
    ("--server-coalesce-writes", "coalesce_writes", int, "server"),
    ("--split-replies-above", "split_replies_above", int, "server"),
    ("--client-coalesce-writes", "coalesce_writes", int, "client"),
)


def _dest(flag: str) -> str:
    return flag.removeprefix("--").replace("-", "_")


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("callrt options (default: the library's)")
    for flag, field, kind, side in _FLAGS:
        choices = ("auto", "protocol", "stream") if field == "transport" else None
        group.add_argument(flag, type=kind, choices=choices, help=f"{side} option {field}")
    group.add_argument(
        "--method",
        choices=("echo", "aecho", "techo"),
        default="echo",
        help="@inline sync (echo), async (aecho) or worker-thread sync (techo) echo handler",
    )
    group.add_argument("--tls-dir", type=Path, help="mutual TLS 1.3 with the certificates in DIR (bench/tls.py)")
    group.add_argument(
        "--otel-sdk",
        action="store_true",
        help="configure the OpenTelemetry SDK in this process (bench/otel.py): spans through a "
        "BatchSpanProcessor, metrics through a PeriodicExportingMetricReader, both to in-memory exporters",
    )


def _options(args: argparse.Namespace, side: str) -> dict[str, Any]:
    chosen = ((field, getattr(args, _dest(flag))) for flag, field, _, s in _FLAGS if s == side)
    return {field: bool(value) if field == "coalesce_writes" else value for field, value in chosen if value is not None}


def _tls(args: argparse.Namespace, side: str) -> dict[str, Any]:
    """``tls=`` for the side's options: mutual TLS, TLS 1.3 only (none without ``--tls-dir``)."""
    d: Path | None = args.tls_dir
    if d is None:
        return {}
    v13 = ssl.TLSVersion.TLSv1_3
    if side == "server":
        context = tls.server_context(
            d / "server.pem", d / "server.key", client_ca_file=d / "ca.pem", minimum_version=v13
        )
    else:
        context = tls.client_context(
            d / "ca.pem", cert_file=d / "client.pem", key_file=d / "client.key", minimum_version=v13
        )
    return {"tls": context}


async def _serve(address: Address, args: argparse.Namespace) -> None:
    if args.otel_sdk:
        otel.configure("callrt server")
    options = call.ServerOptions(**_options(args, "server"), **_tls(args, "server"))
    await call.serve(address.url, Echo(), options=options)


@asynccontextmanager
async def _connect(address: Address, args: argparse.Namespace) -> AsyncIterator[Client]:
    if args.otel_sdk:
        otel.configure("callrt client")
    options = call.ClientOptions(**_options(args, "client"), **_tls(args, "client"))
    async with call.connect(call.ConstantResolver([address.url]), options=options) as conn:
        stub: Any = conn.stub(Echo)  # the stub's methods are awaitable versions of Echo's
        await stub.echo(b"")  # handshake done before the connection counts as open
        yield Client(call=getattr(stub, args.method), hold=stub.hold)


SYSTEM = System(
    name="callrt",
    serve=_serve,
    connect=_connect,
    loops=("uvloop", "asyncio", "trio"),
    add_arguments=_add_arguments,
)
