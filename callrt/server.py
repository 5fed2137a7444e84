"""Serving: ``serve()`` and ``start_server()`` host components on one or more endpoints, then drain.

The :class:`~callrt.connection.server.Server` they make holds the handlers and
the live connections; each endpoint is listened on by the transport its
scheme and ``ServerOptions.transport`` choose.
"""

from __future__ import annotations

import ipaddress
import logging
import signal
import socket
import threading
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager, nullcontext

import anyio
from anyio.abc import TaskStatus

from .claims import add_affinity
from .connection.server import Server
from .endpoints import Endpoint, parse_endpoint
from .handlers import HandlerMap
from .health import add_health
from .interceptors import intercept_handlers
from .options import ServerOptions
from .reflection import add_reflection
from .transport import TransportSelector
from .transport.base import listen_error

__all__ = ("serve", "start_server")

logger = logging.getLogger("callrt.server")


def _handler_map(components: Sequence[object]) -> HandlerMap:
    handlers = HandlerMap()
    for impl in components:
        if isinstance(impl, type):
            name = impl.__qualname__
            raise TypeError(f"serve() needs component instances, not classes: pass {name}() not {name}")
        if isinstance(impl, HandlerMap):
            for key in impl:
                entry = impl.get(key)
                assert entry is not None
                component, _, method = entry.name.rpartition(".")
                handlers.set(
                    component, method, entry.handler, inline=entry.inline, spec=entry.component, stream=entry.stream
                )
        else:
            handlers.add_handlers(None, impl)
    return handlers


async def serve(
    address: str | Endpoint | Sequence[str | Endpoint],
    *components: object,
    options: ServerOptions | None = None,
    task_status: TaskStatus[Server] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``components`` on ``address`` (one or several) until cancelled or stopped, then drain.

    Components are instances of ``@component`` classes (or a prepared
    :class:`HandlerMap`). With ``task_group.start(serve, ...)`` the started
    value is the :class:`Server`, whose ``endpoint`` has the bound port.

    On the main thread (with ``ServerOptions.handle_signals``, the default), SIGTERM
    and SIGINT drain the server and ``serve`` returns normally. The handlers are in
    place before the server listens, so no signal can kill it undrained once a
    client could have reached it.
    """
    options = options or ServerOptions()
    on_main_thread = threading.current_thread() is threading.main_thread()
    signals = anyio.open_signal_receiver(*_DRAIN_SIGNALS) if options.handle_signals and on_main_thread else None
    with signals or nullcontext() as received:
        async with start_server(address, *components, options=options) as server:
            task_status.started(server)
            if received is None:
                await server._stop.wait()
                return
            async with anyio.create_task_group() as tg:

                async def stop_on_signal() -> None:
                    async for signum in received:
                        logger.info("%s received: draining", signal.Signals(signum).name)
                        server.stop()
                        return

                tg.start_soon(stop_on_signal)
                await server._stop.wait()
                tg.cancel_scope.cancel()


_DRAIN_SIGNALS = (signal.SIGTERM, signal.SIGINT)


async def _refuse_exposed_plaintext(endpoints: Sequence[Endpoint], options: ServerOptions) -> None:
    """Plaintext on a TCP address other machines can reach needs ``insecure=True``; checked before binding.

    Loopback addresses, and host names that resolve only to loopback addresses (``localhost``),
    are fine; so are Unix sockets and ``memory://``. ``0.0.0.0`` and ``::`` are every address.
    """
    if options.tls is not None or options.insecure:
        return
    for endpoint in endpoints:
        if endpoint.scheme == "tcp" and not await _loopback_only(endpoint.host):
            raise ValueError(
                f"refusing to serve plaintext on {endpoint}, which other machines can reach: give the server "
                "a TLS context (ServerOptions(tls=callrt.tls.server_context(...))), or opt in to unencrypted, "
                "unauthenticated connections with ServerOptions(insecure=True)"
            )


async def _loopback_only(host: str) -> bool:
    if not host:
        return False  # binds every address
    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        pass  # a host name: what does it bind to?
    try:
        infos = await anyio.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except OSError:
        return True  # it cannot be bound either: binding reports that error
    return bool(infos) and all(ipaddress.ip_address(str(info[4][0]).split("%")[0]).is_loopback for info in infos)


@asynccontextmanager
async def start_server(
    address: str | Endpoint | Sequence[str | Endpoint],
    *components: object,
    options: ServerOptions | None = None,
) -> AsyncIterator[Server]:
    """``async with start_server(address, *components) as server:`` serves while the block runs, then drains.

    On exit, in order: registrations are removed (clients stop picking this
    server), listeners stop accepting, connections get a goaway and calls in
    flight get ``drain_grace`` seconds to finish, then everything closes.
    """
    addresses = [address] if isinstance(address, (str, Endpoint)) else list(address)
    endpoints = [parse_endpoint(a) for a in addresses]
    server = Server(_handler_map(components), options or ServerOptions())
    add_health(server)
    add_affinity(server, components)  # callrt.Affinity: claims for the components' methods
    if server.options.reflection:
        add_reflection(server.handlers)
    server.thread_limiter = anyio.CapacityLimiter(server.options.handler_threads)
    # With interceptors every handler is wrapped by their chain; without, the table is unchanged.
    server.handlers = intercept_handlers(server.handlers, server.options.interceptors, server.thread_limiter)
    await _refuse_exposed_plaintext(endpoints, server.options)
    transports = TransportSelector(server.options.transport)
    raised: BaseException | None = None  # by the caller's block
    failed: Exception | None = None  # binding or registering
    async with anyio.create_task_group() as connections:
        try:
            async with AsyncExitStack() as stack:
                try:
                    for endpoint in endpoints:
                        listener = transports.for_endpoint(endpoint).listen(endpoint, server, connections)
                        try:
                            bound = await stack.enter_async_context(listener)
                        except OSError as exc:
                            raise listen_error(endpoint, exc) from exc  # "cannot listen on tcp://...: address in use"
                        server.endpoints.append(bound)
                    for registrar in server.options.registrars:
                        for endpoint in server.endpoints:
                            await stack.enter_async_context(registrar.registered(endpoint))
                except Exception as exc:
                    # Raised below, once what was opened is closed: raised through a listener's
                    # task group, it would reach the caller inside an exception group.
                    failed = exc
                else:
                    if server.options.slow_inline_handler > 0:
                        connections.start_soon(_watch_the_loop, server)
                    if logger.isEnabledFor(logging.INFO):
                        served = {name.rpartition(".")[0] for name in server.handlers.names()}
                        # The application's: callrt's own (callrt.Health, callrt.Reflection) are on every server.
                        names = sorted(c for c in served if not c.startswith("callrt."))
                        logger.info("serving %s on %s", ", ".join(names), ", ".join(map(str, server.endpoints)))
                    try:
                        yield server
                    except BaseException as exc:
                        # Raised by the caller's block: re-raised below, outside our task group,
                        # so that it reaches the caller as itself, not inside an exception group.
                        raised = exc
        except Exception as exc:
            failed = failed or exc  # raised below as itself, not in a group
        finally:
            if server.endpoints:
                logger.info("stopped accepting on %s; draining", ", ".join(map(str, server.endpoints)))
            with anyio.CancelScope(shield=True):
                await server.drain()
            if server.endpoints:
                logger.info("stopped serving on %s", ", ".join(map(str, server.endpoints)))
            connections.cancel_scope.cancel()
    if raised is not None:
        raise raised
    if failed is not None:
        raise failed


async def _watch_the_loop(server: Server) -> None:
    """Log inline handlers that hold the event loop longer than ``slow_inline_handler``.

    The loop stamps a heartbeat a few times per threshold; a thread notices when the stamps
    stop, and names the handler that is running inline then (its connection's slot says).
    Nothing is timed per call.
    """
    threshold = server.options.slow_inline_handler
    beat = [time.monotonic()]
    stop = threading.Event()

    def watch() -> None:
        stalled: tuple[float, str | None] | None = None  # since when, and who held the loop
        while not stop.wait(threshold / 4):
            now, last = time.monotonic(), beat[0]
            if stalled is None and now - last > threshold:
                running = (conn.inline_call_running() for conn in list(server.connections))
                stalled = (last, next((name for name in running if name is not None), None))
            elif stalled is not None and last > stalled[0]:
                since, name = stalled
                held = last - since
                if name is not None:
                    logger.warning(
                        "%s held the event loop for %.2f s: a blocking call in an inline handler? "
                        "Make it a plain def (not @inline) to run it in a worker thread, or await the blocking work",
                        name,
                        held,
                    )
                else:  # the machine, the collector, or the application's own code: not ours to warn of
                    logger.debug("the event loop was blocked for %.2f s, outside callrt's handlers", held)
                stalled = None

    thread = threading.Thread(target=watch, name="callrt loop watch", daemon=True)
    thread.start()
    try:
        while True:
            beat[0] = time.monotonic()
            await anyio.sleep(threshold / 4)
    finally:
        stop.set()
