"""Options for servers and clients; defaults are chosen by measurement (see bench/).

Per-call options (:class:`~callrt.context.CallOptions`) live below, in
``callrt.context``, because balancers read them.
"""

from __future__ import annotations

import ssl
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from .access import AccessPolicy
from .balancers import Balancer
from .compression import codecs_named
from .interceptors import ClientInterceptor, ServerInterceptor
from .protocol import DEFAULT_MAX_FRAME_SIZE
from .registry import Registrar

__all__ = ("ClientOptions", "RetryPolicy", "ServerOptions", "TransportChoice")

TransportChoice = Literal["auto", "protocol", "stream"]


@dataclass(frozen=True, slots=True, kw_only=True)
class ServerOptions:
    """How a server runs handlers, writes replies and shuts down.

    :ivar inline_handler_duration: seconds an async handler that blocks may keep
        the connection's reading path before later frames are handed to a new
        task. Handlers that finish without blocking always run inline. Negative:
        every async handler runs in a task of its own.
    :ivar write_flatten_limit: replies up to this many bytes are copied into one
        buffer with their header; larger payloads are written without a copy.
        Negative: never flatten. 64 KiB by measurement (bench/README.md): below
        it a copy is cheaper than a second buffer in the write.
    :ivar coalesce_writes: replies ready together leave in one write (one syscall
        per batch instead of one per reply). Off only to measure what it buys.
    :ivar split_replies_above: with ``coalesce_writes``, a batch of more replies
        than this leaves in two writes: its first half as soon as it is made,
        so that the client works on it while the server makes the rest,
        instead of the two taking turns (with 64 calls in flight, client and
        server on two CPUs: 45% more calls/s; on one CPU up to 4% fewer:
        bench/README.md). ``0``: a batch's replies leave in one write. The
        asyncio Protocol shell only, and not over TLS: on anyio streams (trio),
        and over TLS where a write is a record, the extra write costs more than
        the overlap gains.
    :ivar drain_grace: seconds in-flight calls get to finish after a goaway.
    :ivar transport: ``"protocol"`` (asyncio only: an asyncio Protocol, uvloop's
        when installed), ``"stream"`` (anyio streams, any backend) or ``"auto"``.

    Limits, so that no single peer can exhaust or starve the server:

    :ivar max_connections: connections served at once; a client over it gets a
        hello reply that says so and is closed (it backs off and retries).
    :ivar max_calls_per_connection: async calls in flight on one connection; at
        the cap the server stops reading that connection until one finishes, so
        its client's requests wait in its own buffers (backpressure, not failure).
    :ivar max_calls: the same, over all connections.
    :ivar frames_per_turn: frames one connection may have handled before other
        connections get a turn of the event loop.
    :ivar idle_timeout: a connection with no call in flight that sends nothing
        (not even the client's keepalive pings) for this long is closed.
    :ivar body_timeout: a frame whose header has arrived must be complete within this.
    :ivar max_partial_bodies: bytes of partly received frame bodies held over
        all connections; a connection whose body would take the total above it is closed.
    :ivar backlog: the listen backlog (connections the kernel queues before accept).
    :ivar handle_signals: ``serve()`` on the main thread drains on SIGTERM and SIGINT and returns.
    :ivar handler_threads: worker threads that run plain ``def`` handlers (not ``@inline``) at once;
        more calls wait for a thread. A call whose deadline passes is answered at once, but its
        thread counts until the method returns (a thread cannot be stopped).
    :ivar slow_inline_handler: an inline handler (``@inline``, or an ``async def`` before its first
        ``await``) that holds the event loop longer than this is logged (WARNING, ``callrt.server``).
    :ivar send_tracebacks: ``None`` sends handlers' tracebacks only to peers on this
        machine (loopback, Unix sockets); ``True`` to every caller; ``False`` to none.
        Errors keep their type and message either way.

    Security (``callrt.tls`` builds contexts from PEM files; ``callrt.access`` has the policies):

    :ivar tls: serve TLS on TCP and Unix-socket endpoints with this
        ``ssl.SSLContext`` (mutual TLS when it requires client certificates);
        ``handshake_timeout`` bounds the TLS handshake too.
    :ivar insecure: allow plaintext on a TCP address that is not loopback
        (``0.0.0.0``, ``::``, a public address). Without TLS and without this,
        such a server refuses to start.
    :ivar access: who may call what: a callable ``(peer, component, method) -> bool``
        such as :class:`callrt.access.AllowList`, asked before a handler runs;
        a refused call fails with :class:`~callrt.errors.PermissionDenied`.
        ``None``: every caller may call every method.
    :ivar interceptors: async wrappers around every call, the first outermost
        (``callrt.interceptors``): they see the call's method, metadata, deadline and peer, and may
        reject, time it or change its metadata. Empty: handlers are served exactly as without.
    :ivar reflection: answer ``callrt.Reflection`` (what this server serves, with JSON Schemas; ``callrt list``).
    :ivar reuse_port: bind TCP endpoints with ``SO_REUSEPORT`` (Linux, BSD), so that several processes
        serve one port and the kernel spreads connections among them (``callrt serve --workers N``).
    :ivar compression: the codecs callers may compress requests and stream items with, and so the
        ones replies may use (``callrt.compression``: ``"zstd"``, ``"lz4"``, ``"zlib"``); ``None``:
        every one installed; ``()``: none. Offered in the SETTINGS frame after the hello.
    :ivar compression_threshold: replies and stream items smaller than this are never compressed.
    :ivar stream_window: how many of a caller's stream items the server holds for a handler that has
        not taken them yet; with ``stream_window_bytes`` (whichever is reached first), the most the
        caller may send ahead. The server grants more as the handler takes items.
    """

    inline_handler_duration: float = 20e-6
    write_flatten_limit: int = 64 << 10
    coalesce_writes: bool = True
    split_replies_above: int = 16
    max_frame_size: int = DEFAULT_MAX_FRAME_SIZE
    handshake_timeout: float = 10.0
    drain_grace: float = 5.0
    transport: TransportChoice = "auto"
    registrars: Sequence[Registrar] = ()
    max_connections: int = 10_000
    max_calls_per_connection: int = 1_000
    max_calls: int = 20_000
    frames_per_turn: int = 256
    idle_timeout: float = 600.0
    body_timeout: float = 60.0
    max_partial_bodies: int = 512 << 20
    backlog: int = 1024
    send_tracebacks: bool | None = None
    handler_threads: int = 40
    handle_signals: bool = True
    slow_inline_handler: float = 0.1
    tls: ssl.SSLContext | None = None
    insecure: bool = False
    access: AccessPolicy | None = None
    reflection: bool = True
    reuse_port: bool = False
    interceptors: Sequence[ServerInterceptor] = ()
    stream_window: int = 256
    stream_window_bytes: int = 1 << 20
    compression: Sequence[str] | None = None
    compression_threshold: int = 1024

    def __post_init__(self) -> None:
        codecs_named(self.compression)  # a codec that is not installed fails here, not at the first call
        if self.split_replies_above < 0:
            raise ValueError(f"split_replies_above must be 0 (never split) or more, not {self.split_replies_above}")


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryPolicy:
    """Capped, jittered exponential backoff within the call's deadline, and a retry budget.

    The budget (Finagle's shape) lets retries be at most ``budget_ratio`` of
    calls over ``budget_window`` seconds, plus ``budget_min_per_second``, so
    retries cannot multiply load on a struggling service.
    """

    max_attempts: int = 5
    initial_backoff: float = 0.005
    max_backoff: float = 0.5
    multiplier: float = 2.0
    jitter: float = 0.4
    budget_ratio: float = 0.2
    budget_window: float = 10.0
    budget_min_per_second: float = 10.0


@dataclass(frozen=True, slots=True, kw_only=True)
class ClientOptions:
    """How a client connects, writes, waits and retries.

    :ivar coalesce_writes: requests made in one loop iteration leave in one write;
        the first one of an iteration goes at once. Off only to measure what it buys.
    :ivar optimistic_spin_duration: seconds a caller keeps the loop polling for its
        reply before it parks; 0 disables (the default, see bench/README.md).
    :ivar pick_timeout: how long a call without a deadline waits for an available
        replica before :class:`~callrt.errors.Unreachable`.
    :ivar keepalive_interval: a ping is sent after this long without traffic;
        a peer that does not answer within ``keepalive_timeout`` is dead.
    :ivar tls: connect to TCP and Unix-socket endpoints over TLS with this
        ``ssl.SSLContext`` (``callrt.tls.client_context``; give it a certificate
        for mutual TLS). The server's certificate must name the endpoint's host.
    :ivar tls_server_name: the name the server's certificate must carry, instead
        of the endpoint's host (and for Unix sockets, which have none: ``"localhost"``
        when not given).
    :ivar interceptors: async wrappers around every call of this client's stubs, the first
        outermost (``callrt.interceptors``), each once per call, retries included: they see the
        method, arguments, options and deadline (and, after it, the replica), and may reject,
        time or add metadata. Empty: a stub's methods are exactly what they are without.
    :ivar health_interval: seconds between a connected replica's health checks (``callrt.Health.check``
        for the server, ``""``, and for each component this client has a stub of); a replica that
        reports NOT_SERVING is left out of balancing until it reports SERVING again.
        ``None`` or 0: no checks (every connected replica is used).
    :ivar compression: the codec (``"zstd"``, ``"lz4"`` or ``"zlib"``) this client compresses requests
        and stream items with, and asks replies in, when the server offers it and the payload is at
        least ``compression_threshold`` bytes; a payload that compression would not shrink goes as it
        is. ``None``: no compression. ``CallOptions(compression=...)`` chooses per call.
    :ivar stream_window: how many of a server's stream items this client holds for a caller that
        has not taken them yet; with ``stream_window_bytes`` (whichever is reached first), the most
        the server may send ahead. The client grants more as the caller takes items.
    """

    balancer: Balancer | None = None
    write_flatten_limit: int = 64 << 10
    coalesce_writes: bool = True
    optimistic_spin_duration: float = 0.0
    max_frame_size: int = DEFAULT_MAX_FRAME_SIZE
    connect_timeout: float = 5.0
    handshake_timeout: float = 5.0
    keepalive_interval: float = 10.0
    keepalive_timeout: float = 5.0
    reconnect_initial_backoff: float = 0.01
    reconnect_max_backoff: float = 2.0
    pick_timeout: float = 5.0
    fail_fast: bool = False
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    caller: str = ""
    transport: TransportChoice = "auto"
    tls: ssl.SSLContext | None = None
    tls_server_name: str | None = None
    interceptors: Sequence[ClientInterceptor] = ()
    health_interval: float | None = 5.0
    stream_window: int = 256
    stream_window_bytes: int = 1 << 20
    compression: str | None = None
    compression_threshold: int = 1024

    def __post_init__(self) -> None:
        if self.compression is not None:
            codecs_named((self.compression,))
