"""Every transport passes callrt.testing's conformance suite, on every backend it runs on."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from anyio.abc import TaskGroup

from callrt.connection.server import Server
from callrt.endpoints import Endpoint, memory
from callrt.errors import CommunicationError
from callrt.testing.conformance import check_transport
from callrt.transport import MemoryTransport, ProtocolTransport, StreamTransport
from tests.support import ASYNCIO_ONLY

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize("scheme", ["tcp", "unix"])
@pytest.mark.parametrize("anyio_backend", ASYNCIO_ONLY)
async def test_asyncio_protocol_transport(anyio_backend: object, scheme: str, sockdir: Path) -> None:
    await check_transport(ProtocolTransport(), _address(scheme, sockdir))


@pytest.mark.parametrize("scheme", ["tcp", "unix"])
async def test_stream_transport(scheme: str, sockdir: Path) -> None:
    await check_transport(StreamTransport(), _address(scheme, sockdir))


async def test_memory_transport() -> None:
    await check_transport(MemoryTransport(), "memory://conformance")


class _WrongBoundEndpoint(MemoryTransport):
    """A broken transport: ``listen`` yields an endpoint other than the one it listens on."""

    @asynccontextmanager
    async def listen(self, endpoint: Endpoint, server: Server, conn_tg: TaskGroup) -> AsyncIterator[Endpoint]:
        async with super().listen(endpoint, server, conn_tg):
            yield memory(endpoint.address + "-elsewhere")


async def test_the_suite_fails_a_broken_transport() -> None:
    with pytest.raises(CommunicationError, match="cannot connect to memory://broken-elsewhere: connection refused"):
        await check_transport(_WrongBoundEndpoint(), "memory://broken")


def _address(scheme: str, sockdir: Path) -> str:
    return "tcp://127.0.0.1:0" if scheme == "tcp" else f"unix://{sockdir}/conformance.sock"
