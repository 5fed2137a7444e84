"""Service discovery on etcd: servers register under a lease, clients watch a key prefix.

Each serving endpoint is one key, ``<prefix><endpoint URL>`` (for example
``/callrt/shop.Cart/tcp://10.0.0.5:9000``), attached to a lease that its server
keeps alive. A server that drains revokes its lease, so its key disappears at
once; one that dies stops the keepalives, so its key disappears after ``ttl``
seconds.

Both sides speak etcd v3's JSON gateway (``/v3/kv/range``, ``/v3/watch``,
``/v3/lease/*``; etcd 3.4 and later) through :class:`httpx.AsyncClient`, so
they run under asyncio and trio alike. httpx is the optional extra
``callrt[etcd]``, which is why :mod:`callrt.resolvers` does not import this
module::

    from callrt.resolvers.etcd import EtcdRegistrar, EtcdResolver

    await call.serve(..., options=ServerOptions(registrars=[EtcdRegistrar(url, "/callrt/shop.Cart/")]))
    async with call.connect(EtcdResolver(url, "/callrt/shop.Cart/")) as conn: ...
"""

from __future__ import annotations

import base64
import json
import logging
import math
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager, suppress
from dataclasses import dataclass
from typing import Any

import anyio
import httpx

from ..endpoints import Endpoint, parse_endpoint
from ..errors import CallrtError
from ..registry import Registrar, advertised, check_advertise
from ._base import Resolver, Version

__all__ = ("EtcdError", "EtcdRegistrar", "EtcdResolver")

logger = logging.getLogger(__name__)


class EtcdError(CallrtError):
    """etcd could not be reached in time, or it refused a request."""


class EtcdResolver(Resolver):
    """The endpoints registered under ``prefix`` in the etcd at ``url``.

    The version is etcd's revision of the read. ``resolve(version)`` watches
    the prefix for changes after that revision and returns the new set as soon
    as one happens, or ``version`` itself after ``max_wait`` seconds without one.

    :param url: an etcd client URL, e.g. ``"http://127.0.0.1:2379"``.
    :param prefix: the key prefix the servers register under; include the
        trailing separator (``"/callrt/shop.Cart/"``) so that one prefix is not
        the start of another.
    :param max_wait: how long one ``resolve(version)`` waits for a change.
    :param timeout: the bound on each request to etcd and on opening a watch.
    """

    def __init__(self, url: str, prefix: str, *, max_wait: float = 30.0, timeout: float = 5.0) -> None:
        self._gateway = _Gateway(url, timeout)
        self._prefix = _check_prefix(prefix)
        self._max_wait = max_wait
        self._timeout = timeout
        self._endpoints: Sequence[Endpoint] = ()

    def is_constant(self) -> bool:
        return False

    async def resolve(self, version: Version | None) -> tuple[Sequence[Endpoint], Version | None]:
        if version is not None and not await self._changed_since(int(version)):
            return self._endpoints, version
        response = await self._gateway.post(
            "/v3/kv/range", {"key": _b64(self._prefix), "range_end": _b64(_prefix_end(self._prefix)), "keys_only": True}
        )
        self._endpoints = self._parse(response.get("kvs", ()))
        return self._endpoints, str(response["header"]["revision"])

    async def aclose(self) -> None:
        await self._gateway.aclose()

    async def _changed_since(self, revision: int) -> bool:
        """Whether a key under the prefix changes after ``revision`` within ``max_wait``."""
        request = {
            "create_request": {
                "key": _b64(self._prefix),
                "range_end": _b64(_prefix_end(self._prefix)),
                "start_revision": str(revision + 1),
            }
        }
        with anyio.move_on_after(self._max_wait):
            async with self._gateway.stream("/v3/watch", request) as receive:
                try:
                    with anyio.fail_after(self._timeout):
                        created = await receive()
                except TimeoutError:
                    raise EtcdError(
                        f"etcd at {self._gateway.url} did not open a watch within {self._timeout} s"
                    ) from None
                if int(created["header"]["revision"]) < revision:
                    # A version from the future: etcd was replaced or restored
                    # from a backup, and its changes would never reach this watch.
                    return True
                while True:
                    message = await receive()
                    if message.get("events") or "compact_revision" in message:
                        # A compacted start revision means we cannot know what
                        # changed, so read the whole set again.
                        return True
                    if message.get("canceled"):
                        raise EtcdError(f"etcd at {self._gateway.url} canceled the watch: {message}")
        return False

    def _parse(self, kvs: Sequence[dict[str, Any]]) -> Sequence[Endpoint]:
        endpoints: set[Endpoint] = set()
        for kv in kvs:
            key = base64.b64decode(kv["key"])[len(self._prefix) :].decode(errors="replace")
            try:
                endpoints.add(parse_endpoint(key))
            except ValueError:
                logger.warning("ignoring etcd key %r under %r: not an endpoint", key, self._prefix.decode())
        return tuple(sorted(endpoints, key=str))

    def __repr__(self) -> str:
        return f"EtcdResolver({self._gateway.url!r}, {self._prefix.decode()!r})"


class EtcdRegistrar(Registrar):
    """Registers a server's endpoints under ``prefix`` in the etcd at ``url``.

    Each :meth:`registered` grants a lease of ``ttl`` seconds, puts the key
    ``<prefix><endpoint>`` on it, renews it every ``ttl / 3`` seconds and
    revokes it on exit. Renewal failures are logged and retried with capped
    backoff; a lease that expired meanwhile is granted again and the key put
    again. Entering raises :class:`EtcdError` if etcd cannot be reached.

    What is registered is an address clients can connect to: a TCP endpoint
    bound to every interface (``tcp://0.0.0.0:9000``) is registered at this
    machine's address (its host name's, else that of the interface its
    default route leaves by), or entering raises a ValueError that asks for
    ``advertise``.

    :param ttl: seconds a dead server stays registered (etcd's minimum is 2).
    :param timeout: the bound on each request to etcd.
    :param advertise: the host name or IP address clients reach this server
        at, registered instead of the host TCP endpoints are bound to (behind
        NAT, or on a machine with several networks); the port stays the
        listener's.
    """

    def __init__(
        self, url: str, prefix: str, *, ttl: float = 5.0, timeout: float = 5.0, advertise: str | None = None
    ) -> None:
        if ttl <= 0:
            raise ValueError(f"ttl must be positive, not {ttl}")
        self._url = url
        self._prefix = _check_prefix(prefix)
        self._ttl = math.ceil(ttl)
        self._timeout = timeout
        self._advertise = check_advertise(advertise)

    def registered(self, endpoint: Endpoint) -> AbstractAsyncContextManager[None]:
        return self._registered(endpoint)

    @asynccontextmanager
    async def _registered(self, bound: Endpoint) -> AsyncIterator[None]:
        endpoint = await advertised(bound, self._advertise)
        if endpoint != bound:
            logger.info("registering %s in etcd as %s", bound, endpoint)
        lease = _Lease(self._prefix + str(endpoint).encode(), str(endpoint).encode())
        gateway = _Gateway(self._url, self._timeout)
        try:
            await self._register(gateway, lease)
            try:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(self._keep_alive, gateway, lease)
                    try:
                        yield
                    finally:
                        tg.cancel_scope.cancel()
            finally:
                with anyio.CancelScope(shield=True), anyio.move_on_after(self._timeout) as revoking:
                    try:
                        await gateway.post("/v3/lease/revoke", {"ID": lease.id})
                    except EtcdError as exc:
                        logger.warning("could not deregister %s (it expires in %d s): %s", endpoint, self._ttl, exc)
                if revoking.cancelled_caught:
                    logger.warning(
                        "could not deregister %s in %s s (it expires in %d s)", endpoint, self._timeout, self._ttl
                    )
        finally:
            with anyio.CancelScope(shield=True):
                await gateway.aclose()

    async def _register(self, gateway: _Gateway, lease: _Lease) -> None:
        granted = await gateway.post("/v3/lease/grant", {"TTL": self._ttl})
        lease.id = granted["ID"]
        lease.ttl = int(granted["TTL"])
        await gateway.post("/v3/kv/put", {"key": _b64(lease.key), "value": _b64(lease.value), "lease": lease.id})

    async def _keep_alive(self, gateway: _Gateway, lease: _Lease) -> None:
        period = lease.ttl / 3
        failures = 0
        while True:
            await anyio.sleep(min(0.1 * 2**failures, period) if failures else period)
            try:
                response = await gateway.post("/v3/lease/keepalive", {"ID": lease.id})
                if int(response.get("TTL", 0)) <= 0:
                    logger.warning("etcd lease for %s expired; registering again", lease.value.decode())
                    await self._register(gateway, lease)
                    period = lease.ttl / 3
                failures = 0
            except Exception as exc:
                # The server must keep serving whatever etcd does; its key
                # comes back once etcd answers again.
                failures = min(failures + 1, 10)
                logger.warning("could not renew etcd lease for %s: %s", lease.value.decode(), exc)

    def __repr__(self) -> str:
        advertise = "" if self._advertise is None else f", advertise={self._advertise!r}"
        return f"EtcdRegistrar({self._url!r}, {self._prefix.decode()!r}, ttl={self._ttl}{advertise})"


@dataclass(slots=True)
class _Lease:
    key: bytes
    value: bytes
    id: str = "0"
    ttl: int = 0


class _Gateway:
    """etcd's JSON gateway, with every failure raised as :class:`EtcdError`."""

    def __init__(self, url: str, timeout: float) -> None:
        self.url = url.rstrip("/")
        self._timeout = timeout
        self._client = httpx.AsyncClient(base_url=self.url, timeout=timeout)

    async def post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        try:
            response = await self._client.post(path, json=body)
        except httpx.HTTPError as exc:
            raise EtcdError(f"etcd at {self.url}{path}: {exc!r}") from exc
        return _result(self.url + path, response.status_code, response.content)

    @asynccontextmanager
    async def stream(self, path: str, body: dict[str, Any]) -> AsyncIterator[Callable[[], Awaitable[dict[str, Any]]]]:
        """A streaming call; yields a function that returns its next message."""
        where = self.url + path
        request = self._client.build_request("POST", path, json=body, timeout=httpx.Timeout(self._timeout, read=None))
        try:
            with anyio.fail_after(self._timeout):
                response = await self._client.send(request, stream=True)
        except httpx.HTTPError as exc:
            raise EtcdError(f"etcd at {where}: {exc!r}") from exc
        except TimeoutError:
            raise EtcdError(f"etcd at {where}: no answer within {self._timeout} s") from None
        lines = response.aiter_lines()
        try:
            if response.status_code != 200:
                _result(where, response.status_code, await response.aread())

            async def receive() -> dict[str, Any]:
                try:
                    line = ""
                    while not line:
                        line = await anext(lines)
                except StopAsyncIteration:
                    raise EtcdError(f"etcd at {where}: the stream ended") from None
                except httpx.HTTPError as exc:
                    raise EtcdError(f"etcd at {where}: {exc!r}") from exc
                return _result(where, 200, line.encode())

            yield receive
        finally:
            with anyio.CancelScope(shield=True), anyio.move_on_after(self._timeout):
                await response.aclose()
                # httpx reads bodies through nested async generators that trio
                # reports when they are dropped half-read (encode/httpx#3686);
                # one read of the closed body ends them all.
                with suppress(Exception):
                    await anext(lines)

    async def aclose(self) -> None:
        await self._client.aclose()


def _result(where: str, status: int, content: bytes) -> dict[str, Any]:
    try:
        message = json.loads(content)
    except ValueError:
        raise EtcdError(f"etcd at {where}: HTTP {status}, not JSON: {content[:200]!r}") from None
    if status != 200 or "error" in message:
        error = message.get("error")
        detail = error.get("message", error) if isinstance(error, dict) else message.get("message", error)
        raise EtcdError(f"etcd at {where}: HTTP {status}: {detail}")
    # Streaming calls wrap each message in {"result": ...}.
    result: dict[str, Any] = message.get("result", message)
    return result


def _check_prefix(prefix: str) -> bytes:
    if not prefix:
        raise ValueError("etcd prefix must not be empty")
    return prefix.encode()


def _prefix_end(prefix: bytes) -> bytes:
    """The smallest key after every key that starts with ``prefix`` (etcd's range_end)."""
    stripped = prefix.rstrip(b"\xff")
    if not stripped:
        return b"\0"
    return stripped[:-1] + bytes([stripped[-1] + 1])


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()
