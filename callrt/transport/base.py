"""What every transport shell shares: the :class:`Transport` interface, the client's handshake, the error map.

A transport carries callrt's frames: it listens for connections (each one a
:class:`~callrt.connection.server.ServerConnection` it feeds) and opens
connections (each one a :class:`~callrt.connection.client.ClientSession`).
OS and anyio errors are mapped to ``callrt.errors`` here, once per
operation, and go no further: :func:`connect_errors` for connecting,
:data:`BROKEN` for what a read or a write of a live connection may raise.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
import ssl
import stat
import struct
import sys
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import AbstractAsyncContextManager, contextmanager
from typing import Any

import anyio
from anyio.abc import SocketAttribute, TaskGroup

from ..connection.client import ClientSession
from ..connection.server import Server
from ..context import Peer
from ..endpoints import Endpoint
from ..errors import CommunicationError
from ..options import ClientOptions, ServerOptions
from ..protocol import SUPPORTED_VERSIONS, Hello, encode_hello

__all__ = (
    "BROKEN",
    "Transport",
    "UnixSocketFile",
    "bind_unix",
    "client_hello",
    "connect_errors",
    "describe_failure",
    "handshake",
    "listen_error",
    "socket_peer",
    "tls_server_name",
)

# What reading from or writing to a live connection raises when the connection is gone.
BROKEN = (anyio.BrokenResourceError, anyio.ClosedResourceError, anyio.EndOfStream, OSError)


class Transport(ABC):
    """One way of carrying callrt's frames between processes (or within one)."""

    @abstractmethod
    def listen(self, endpoint: Endpoint, server: Server, conn_tg: TaskGroup) -> AbstractAsyncContextManager[Endpoint]:
        """Accept connections for ``server`` on ``endpoint`` while the context is open; yields the bound endpoint.

        Leaving the context stops accepting; live connections stay for the
        drain. Connections that need tasks run them in ``conn_tg``.
        """

    @abstractmethod
    def connect(self, endpoint: Endpoint, options: ClientOptions) -> AbstractAsyncContextManager[ClientSession]:
        """A connected, handshaken session to ``endpoint``; closed on exit.

        :raises ~callrt.errors.CommunicationError: the connection or handshake failed or timed out.
        """


def client_hello(options: ClientOptions) -> bytes:
    """The first bytes a client sends."""
    return encode_hello(Hello(SUPPORTED_VERSIONS[0], SUPPORTED_VERSIONS[-1], options.max_frame_size))


def tls_server_name(endpoint: Endpoint, options: ClientOptions) -> str:
    """The name the server's certificate must carry: ``tls_server_name``, else the endpoint's host.

    A Unix socket has no host: ``"localhost"`` unless ``tls_server_name`` says otherwise.
    """
    if options.tls_server_name is not None:
        return options.tls_server_name
    return endpoint.host if endpoint.scheme == "tcp" else "localhost"


# OpenSSL's reasons for failed TLS handshakes, in words a user can act on.
_TLS_REASONS = {
    "TLSV13_ALERT_CERTIFICATE_REQUIRED": "the server requires a client certificate (mutual TLS) and we sent none",
    "SSLV3_ALERT_BAD_CERTIFICATE": "the server refused our client certificate",
    "SSLV3_ALERT_CERTIFICATE_UNKNOWN": "the server refused our client certificate",
    "TLSV1_ALERT_UNKNOWN_CA": "the server does not trust the CA of our client certificate",
    "CERTIFICATE_VERIFY_FAILED": "certificate verify failed",
    "WRONG_VERSION_NUMBER": "the server does not speak TLS (a plaintext server?)",
    "UNEXPECTED_EOF_WHILE_READING": "the server closed the connection during the TLS handshake",
    "TLSV1_ALERT_PROTOCOL_VERSION": "no TLS version both sides accept",
    "UNSUPPORTED_PROTOCOL": "no TLS version both sides accept",
}


# How a peer's plain close looks to each shell.
_EOF = (anyio.EndOfStream, anyio.BrokenResourceError, ConnectionError)


def describe_failure(exc: BaseException, options: ClientOptions) -> str:
    """Why a connection or its handshake failed, TLS failures in plain words (one place, for every shell)."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        # "unable to get local issuer certificate", "Hostname mismatch, certificate is not valid for 'x'", ...
        return f"TLS: the server's certificate verify failed: {exc.verify_message}"
    if isinstance(exc, ssl.SSLError):
        reason = exc.reason or ""
        return f"TLS: {_TLS_REASONS.get(reason, reason.replace('_', ' ').lower() or 'handshake failed')} ({exc})"
    if options.tls is not None and isinstance(exc, _EOF):
        return (
            "the server closed the connection during the TLS handshake (a plaintext server? "
            f"no TLS version both sides accept?): {exc!r}"
        )
    return _os_failure(exc) or str(exc) or type(exc).__name__


def _os_failure(exc: BaseException) -> str | None:
    """A failed connect in a few words: "connection refused", "no such file", "name not resolved (...)"."""
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, FileNotFoundError):
        return "no such file"
    if isinstance(exc, socket.gaierror):
        return f"name not resolved ({exc.strerror})"
    if isinstance(exc, OSError) and exc.errno is None and exc.__cause__ is not None:
        # anyio's connect_tcp: OSError("All connection attempts failed") from the attempts' errors
        cause = exc.__cause__
        attempts = cause.exceptions if isinstance(cause, BaseExceptionGroup) else (cause,)
        return ", ".join(sorted({_os_failure(e) or str(e) for e in attempts}))
    if isinstance(exc, OSError) and exc.errno:
        return os.strerror(exc.errno).lower()  # "no route to host", "permission denied", ...
    return None


@contextmanager
def connect_errors(endpoint: Endpoint, options: ClientOptions) -> Iterator[None]:
    """Bound a connection attempt (its TLS handshake included) by ``connect_timeout``; its errors become
    :class:`CommunicationError`."""
    try:
        with anyio.fail_after(options.connect_timeout):
            yield
    except TimeoutError:
        raise CommunicationError(f"connecting to {endpoint} timed out after {options.connect_timeout}s") from None
    except (OSError, anyio.BrokenResourceError, anyio.EndOfStream) as exc:  # anyio's: EOF in a TLS handshake
        raise CommunicationError(f"cannot connect to {endpoint}: {describe_failure(exc, options)}") from exc


async def handshake(session: ClientSession, endpoint: Endpoint, options: ClientOptions) -> None:
    """Wait for the server's hello reply (the shell sent :func:`client_hello` and reads into ``session``).

    On failure the session is aborted and a :class:`CommunicationError` says why.
    """
    try:
        with anyio.fail_after(options.handshake_timeout):
            await session.ready.wait()
    except TimeoutError:
        session.abort(CommunicationError("handshake timed out"))
        raise CommunicationError(f"handshake with {endpoint} timed out after {options.handshake_timeout}s") from None
    except BaseException:
        # Cancelled mid-handshake (the client is closing, say): close the socket now, not
        # whenever the transport is collected (uvloop warns, and may not cope).
        session.abort(CommunicationError("handshake interrupted"))
        raise
    if session.lost.is_set():
        error = session.error
        if error is not None and not isinstance(error, _EOF):
            why = f": {describe_failure(error, options)}"
        elif options.tls is not None:
            # With TLS 1.3 a server checks the client's certificate after the client's side of the
            # TLS handshake is done, and the shells close without sending the alert that says why.
            why = (
                ", right after the TLS handshake: how a server refuses a client certificate "
                "(it requires one and we sent none, or it does not trust the CA of ours)"
            )
        else:
            why = " (if it serves TLS, the client needs ClientOptions(tls=...))"
        raise CommunicationError(f"{endpoint} closed the connection during the handshake{why}") from session.error


_PEERCRED = struct.Struct("3i")  # pid, uid, gid: Linux's struct ucred


def socket_peer(sock: socket.socket | None, peername: Any, cert: dict[str, Any] | None = None) -> Peer:
    """Who is on the other end of an accepted socket: address, Unix credentials, verified TLS names.

    ``cert`` is the peer's certificate as ``ssl.SSLSocket.getpeercert()`` gives it (verified, or ``None``).
    """
    uri_sans: tuple[str, ...] = ()
    dns_sans: tuple[str, ...] = ()
    if cert:
        names = cert.get("subjectAltName", ())
        uri_sans = tuple(value for kind, value in names if kind == "URI")
        dns_sans = tuple(value for kind, value in names if kind == "DNS")
    if sock is not None and sock.family == socket.AF_UNIX:
        uid = gid = pid = None
        if sys.platform == "linux":
            try:
                pid, uid, gid = _PEERCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size))
            except OSError:
                pass
        path = sock.getsockname()
        address = f"unix://{path if isinstance(path, str) else path.decode(errors='backslashreplace')}"
        return Peer(address, True, uid, gid, pid, uri_sans, dns_sans)
    if isinstance(peername, tuple) and len(peername) >= 2:
        host, port = str(peername[0]), int(peername[1])
        try:
            local = ipaddress.ip_address(host.split("%")[0]).is_loopback
        except ValueError:
            local = False
        address = f"tcp://[{host}]:{port}" if ":" in host else f"tcp://{host}:{port}"
        return Peer(address, local, uri_sans=uri_sans, dns_sans=dns_sans)
    return Peer(f"tcp://{peername}", False, uri_sans=uri_sans, dns_sans=dns_sans)


# -- Unix socket files -----------------------------------------------------------------------------


class UnixSocketFile:
    """The file a listening Unix socket made: removed on :meth:`remove` only if it is still that file.

    Another server may have replaced it since (after this one was declared dead, say); its file is
    not ours to delete, so the device and inode seen right after binding are compared first.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._identity: tuple[int, int] | None = None
        if not path.startswith("\0"):  # Linux's abstract namespace has no file
            st = os.stat(path)
            self._identity = (st.st_dev, st.st_ino)

    def remove(self) -> None:
        if self._identity is None:
            return
        try:
            st = os.stat(self.path)
            if (st.st_dev, st.st_ino) == self._identity:
                os.unlink(self.path)
        except OSError:
            pass  # gone already, or not ours to touch
        self._identity = None


async def bind_tcp(endpoint: Endpoint, options: ServerOptions) -> tuple[Any, Endpoint]:
    """anyio's TCP listener at ``endpoint`` (every address of the host, reuse, dual stack), and the endpoint it bound.

    The endpoint has the real port when port 0 was asked for.
    """
    listener: Any = await anyio.create_tcp_listener(
        local_host=endpoint.host, local_port=endpoint.port, backlog=options.backlog, reuse_port=options.reuse_port
    )
    host, port = listener.listeners[0].extra(SocketAttribute.local_address)[:2]
    return listener, Endpoint("tcp", f"[{host}]:{port}" if ":" in host else f"{host}:{port}")


def bind_unix(endpoint: Endpoint, backlog: int) -> tuple[socket.socket, UnixSocketFile]:
    """A listening, non-blocking Unix socket at ``endpoint``'s path, and its file (to remove at exit).

    A path another server still listens on is never taken over: :class:`OSError` (``EADDRINUSE``)
    names it. A socket file nobody listens on (left by a server that crashed) is removed and
    bound again. A path that exists and is not a socket is left alone (``FileExistsError``).
    Errors name the endpoint.
    """
    path = endpoint.address
    if not path.startswith("\0"):
        _reclaim_stale(endpoint)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        try:
            sock.bind(path)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:  # someone bound it since we looked
                raise OSError(errno.EADDRINUSE, f"another server is listening on {endpoint}") from None
            raise listen_error(endpoint, exc) from None
        file = UnixSocketFile(path)
        try:
            sock.listen(backlog)
        except BaseException:
            file.remove()
            raise
    except BaseException:
        sock.close()
        raise
    return sock, file


def _reclaim_stale(endpoint: Endpoint) -> None:
    """Remove a socket file at ``endpoint`` that no server answers on; refuse a live one or a non-socket."""
    path = endpoint.address
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise listen_error(endpoint, exc) from None
    if not stat.S_ISSOCK(st.st_mode):
        raise FileExistsError(
            errno.EEXIST, f"cannot listen on {endpoint}: the path exists and is not a socket (left as it is)"
        )
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.setblocking(False)  # a Unix connect does not wait for the peer: it is refused, queued or accepted at once
    try:
        code = probe.connect_ex(path)
    finally:
        probe.close()
    if code == errno.ECONNREFUSED:  # nobody listens: a stale file
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
    elif code == errno.ENOENT:
        pass  # removed meanwhile
    elif code in (0, errno.EAGAIN, errno.EINPROGRESS):  # accepted, or queued (a full backlog): alive
        raise OSError(errno.EADDRINUSE, f"another server is listening on {endpoint}")
    else:
        raise OSError(code, f"cannot listen on {endpoint}: {os.strerror(code).lower()} (probing the existing socket)")


def listen_error(endpoint: Endpoint, exc: OSError) -> OSError:
    """``exc``, raised while listening on ``endpoint``, as an error of the same kind that names the endpoint."""
    if str(endpoint) in str(exc):
        return exc
    message = f"cannot listen on {endpoint}: {_os_reason(exc)}"
    if exc.errno == errno.EADDRINUSE:
        message += " (another process is listening on it)"
    if isinstance(exc, socket.gaierror):
        return socket.gaierror(exc.errno, message)
    if exc.errno is None:
        return OSError(message)
    return OSError(exc.errno, message)  # the same subclass: FileNotFoundError, PermissionError, ...


def _os_reason(exc: OSError) -> str:
    if isinstance(exc, socket.gaierror):
        return f"name not resolved ({exc.strerror})"
    if exc.errno:
        return os.strerror(exc.errno).lower()
    return str(exc)
