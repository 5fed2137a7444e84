"""The errors callrt raises, in one tree.

::

    CallrtError
     ├── CommunicationError        the call may not have reached a handler, or its
     │    │                        reply was lost; retriable methods are retried
     │    ├── Unreachable          no endpoint to send the call to
     │    │    ├── NoReplicaInTime  the call's deadline came while it waited for a
     │    │    │                    replica (also TimeoutError)
     │    │    └── NoClaim          no replica claimed an affinity call; says what
     │    │                         each replica answered
     │    ├── SessionLost          the connection carrying the call was lost;
     │    │                        ``sent`` says whether the request had left
     │    └── ProtocolError        a peer broke the wire protocol (abstract)
     │         ├── LocalProtocolError    we would break it (e.g. frame too large)
     │         └── RemoteProtocolError   the peer broke it (malformed frame)
     ├── ClosedError               the client or server was closed by its owner
     ├── RegistrationError         a component or method key cannot be registered
     └── RemoteError               the handler ran (or was refused) and failed;
          │                        carries code, remote type, message, traceback
          ├── InvalidArgument      arguments did not match the method's types
          ├── UnknownMethod        no handler for the method key
          ├── DeadlineExceeded     the server's deadline passed (also TimeoutError)
          ├── Cancelled            the handler was cancelled on the caller's behalf
          ├── Unavailable          the server refused the call (draining, overloaded)
          ├── PermissionDenied     the server's access policy refused the caller
          └── Internal             the server failed outside the handler

``except CommunicationError`` works the same on both sides of the wire: a
handler that lets a ``CommunicationError`` escape (from a nested call, say)
reaches its caller as a ``RemoteError`` with code ``unavailable``, not as a
communication error of the outer call, so the outer call is never retried on
the strength of a failure somewhere downstream.

Error codes are psrpc's set; :data:`HTTP_STATUS` and :data:`GRPC_STATUS` map
them onto HTTP statuses and gRPC status codes.

An application exception that its component declares
(``@component(errors=(OutOfStock,))``) reaches a caller whose stub was made
from that component as the caller's own ``OutOfStock``, rebuilt from its
``args`` and raised from the :class:`RemoteError` that carried it
(:func:`remote_details`). Only declared classes are rebuilt; everything else
stays a :class:`RemoteError`.
"""

from __future__ import annotations

import enum
from typing import ClassVar

__all__ = (
    "GRPC_STATUS",
    "HTTP_STATUS",
    "CallrtError",
    "Cancelled",
    "ClosedError",
    "CommunicationError",
    "DeadlineExceeded",
    "ErrorCode",
    "Internal",
    "InvalidArgument",
    "LocalProtocolError",
    "NoClaim",
    "NoReplicaInTime",
    "PermissionDenied",
    "ProtocolError",
    "RegistrationError",
    "RemoteError",
    "RemoteProtocolError",
    "SessionLost",
    "Unavailable",
    "UnknownMethod",
    "Unreachable",
    "remote_details",
    "remote_error",
)


class ErrorCode(str, enum.Enum):
    """psrpc's error codes; the value is what travels on the wire."""

    UNKNOWN = "unknown"
    CANCELED = "canceled"
    MALFORMED_REQUEST = "malformed_request"
    MALFORMED_RESPONSE = "malformed_result"
    DEADLINE_EXCEEDED = "deadline_exceeded"
    UNAVAILABLE = "unavailable"
    INVALID_ARGUMENT = "invalid_argument"
    NOT_FOUND = "not_found"
    NOT_ACCEPTABLE = "not_acceptable"
    ALREADY_EXISTS = "already_exists"
    PERMISSION_DENIED = "permission_denied"
    RESOURCE_EXHAUSTED = "resource_exhausted"
    FAILED_PRECONDITION = "failed_precondition"
    ABORTED = "aborted"
    OUT_OF_RANGE = "out_of_range"
    UNIMPLEMENTED = "unimplemented"
    INTERNAL = "internal"
    DATA_LOSS = "data_loss"
    UNAUTHENTICATED = "unauthenticated"

    @classmethod
    def parse(cls, value: str) -> ErrorCode:
        """The code for ``value``; codes from a newer peer become ``UNKNOWN``."""
        try:
            return cls(value)
        except ValueError:
            return cls.UNKNOWN


HTTP_STATUS: dict[ErrorCode, int] = {
    ErrorCode.UNKNOWN: 500,
    ErrorCode.CANCELED: 408,
    ErrorCode.MALFORMED_REQUEST: 400,
    ErrorCode.MALFORMED_RESPONSE: 500,
    ErrorCode.DEADLINE_EXCEEDED: 504,
    ErrorCode.UNAVAILABLE: 503,
    ErrorCode.INVALID_ARGUMENT: 400,
    ErrorCode.NOT_FOUND: 404,
    ErrorCode.NOT_ACCEPTABLE: 406,
    ErrorCode.ALREADY_EXISTS: 409,
    ErrorCode.PERMISSION_DENIED: 403,
    ErrorCode.RESOURCE_EXHAUSTED: 429,
    ErrorCode.FAILED_PRECONDITION: 412,
    ErrorCode.ABORTED: 409,
    ErrorCode.OUT_OF_RANGE: 400,
    ErrorCode.UNIMPLEMENTED: 501,
    ErrorCode.INTERNAL: 500,
    ErrorCode.DATA_LOSS: 500,
    ErrorCode.UNAUTHENTICATED: 401,
}

# gRPC status codes by number (grpc.StatusCode values), so no grpc import is needed.
GRPC_STATUS: dict[ErrorCode, int] = {
    ErrorCode.UNKNOWN: 2,
    ErrorCode.CANCELED: 1,
    ErrorCode.MALFORMED_REQUEST: 3,
    ErrorCode.MALFORMED_RESPONSE: 13,
    ErrorCode.DEADLINE_EXCEEDED: 4,
    ErrorCode.UNAVAILABLE: 14,
    ErrorCode.INVALID_ARGUMENT: 3,
    ErrorCode.NOT_FOUND: 5,
    ErrorCode.NOT_ACCEPTABLE: 3,
    ErrorCode.ALREADY_EXISTS: 6,
    ErrorCode.PERMISSION_DENIED: 7,
    ErrorCode.RESOURCE_EXHAUSTED: 8,
    ErrorCode.FAILED_PRECONDITION: 9,
    ErrorCode.ABORTED: 10,
    ErrorCode.OUT_OF_RANGE: 11,
    ErrorCode.UNIMPLEMENTED: 12,
    ErrorCode.INTERNAL: 13,
    ErrorCode.DATA_LOSS: 15,
    ErrorCode.UNAUTHENTICATED: 16,
}


class CallrtError(Exception):
    """Base of every error callrt raises."""


class CommunicationError(CallrtError):
    """Raised when a call could not be delivered or its reply was lost."""


class Unreachable(CommunicationError):
    """Raised when there is no endpoint (or no available replica) for a call."""


class NoReplicaInTime(Unreachable, TimeoutError):
    """Raised when a call's deadline comes while it waits for an available replica; says why there was none.

    The call gives up waiting a moment before the deadline (a tenth of the time it had left, at
    most 50 ms), so that this error, not the bare ``TimeoutError`` of the caller's
    ``anyio.fail_after``, reaches the caller.
    """


class NoClaim(Unreachable):
    """Raised when no replica claimed an affinity call (``client.by_affinity(...)``); the call was not sent.

    The message says how many replicas answered and how many did not (timed out,
    failed, not connected), and what each claimed.

    :ivar answered: replicas that answered the claim (with a claim or a decline).
    :ivar unanswered: replicas that did not (no answer in time, an error, not connected).
    :ivar claims: what each replica that answered claimed, by endpoint (negative: declined).
    """

    def __init__(
        self, message: str, *, answered: int = 0, unanswered: int = 0, claims: dict[str, float] | None = None
    ) -> None:
        super().__init__(message)
        self.answered = answered
        self.unanswered = unanswered
        self.claims = dict(claims or {})


class SessionLost(CommunicationError):
    """Raised for calls on a connection that was lost; ``sent`` tells whether the request had left the client.

    A request that never left (``sent=False``) is retried even for a ``@not_retriable`` method.
    """

    def __init__(self, message: str, *, sent: bool = True) -> None:
        super().__init__(message)
        self.sent = sent


class ProtocolError(CommunicationError):
    """Raised when the wire protocol is broken; never raised itself."""

    def __init__(self, *args: object) -> None:
        if type(self) is ProtocolError:
            raise TypeError("ProtocolError is abstract: raise LocalProtocolError or RemoteProtocolError")
        super().__init__(*args)


class LocalProtocolError(ProtocolError):
    """Raised when this side would break the protocol, e.g. a frame over the peer's maximum."""


class RemoteProtocolError(ProtocolError):
    """Raised when the peer sent bytes that are not valid protocol."""


class ClosedError(CallrtError):
    """Raised when a call is made on a connection its owner has closed."""


class RegistrationError(CallrtError):
    """Raised when a component or method cannot be registered (bad name, duplicate key)."""


class RemoteError(CallrtError):
    """Raised when the remote side failed the call.

    :ivar code: the :class:`ErrorCode`.
    :ivar remote_type: the qualified name of the exception type raised remotely.
    :ivar message: ``str()`` of the remote exception.
    :ivar remote_traceback: the formatted remote traceback, or ``""``.
    :ivar remote_args: the MessagePack-encoded ``args`` of an exception its
        component declared (``@component(errors=...)``), or None; a stub made from
        that component raises the declared class instead, with this error as its
        ``__cause__``.
    """

    default_code: ClassVar[ErrorCode] = ErrorCode.UNKNOWN

    def __init__(
        self,
        message: str = "",
        *,
        code: ErrorCode | None = None,
        remote_type: str = "",
        remote_traceback: str = "",
        remote_args: bytes | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code if code is not None else self.default_code
        self.remote_type = remote_type
        self.message = message
        self.remote_traceback = remote_traceback
        self.remote_args = remote_args

    def __str__(self) -> str:
        kind = f" ({self.remote_type})" if self.remote_type else ""
        return f"[{self.code.value}]{kind} {self.message}"

    @property
    def http_status(self) -> int:
        return HTTP_STATUS[self.code]

    @property
    def grpc_status(self) -> int:
        return GRPC_STATUS[self.code]


class InvalidArgument(RemoteError):
    """Raised when a call's arguments do not match the method's type hints."""

    default_code = ErrorCode.INVALID_ARGUMENT


class UnknownMethod(RemoteError):
    """Raised when the server has no handler for the call's method key."""

    default_code = ErrorCode.UNIMPLEMENTED


class DeadlineExceeded(RemoteError, TimeoutError):
    """Raised when the server cancelled the handler because the call's deadline passed."""

    default_code = ErrorCode.DEADLINE_EXCEEDED


class Cancelled(RemoteError):
    """Raised when the server cancelled the handler (caller cancelled, or server stopping)."""

    default_code = ErrorCode.CANCELED


class Unavailable(RemoteError):
    """Raised when the server refused the call or a dependency of the handler was unreachable."""

    default_code = ErrorCode.UNAVAILABLE


class PermissionDenied(RemoteError):
    """Raised when the server's access policy does not allow the caller's identity to call the method."""

    default_code = ErrorCode.PERMISSION_DENIED


class Internal(RemoteError):
    """Raised when the server failed outside the handler (e.g. the result could not be encoded)."""

    default_code = ErrorCode.INTERNAL


_BY_CODE: dict[ErrorCode, type[RemoteError]] = {
    ErrorCode.INVALID_ARGUMENT: InvalidArgument,
    ErrorCode.MALFORMED_REQUEST: InvalidArgument,
    ErrorCode.UNIMPLEMENTED: UnknownMethod,
    ErrorCode.DEADLINE_EXCEEDED: DeadlineExceeded,
    ErrorCode.CANCELED: Cancelled,
    ErrorCode.UNAVAILABLE: Unavailable,
    ErrorCode.PERMISSION_DENIED: PermissionDenied,
    ErrorCode.INTERNAL: Internal,
    ErrorCode.MALFORMED_RESPONSE: Internal,
}


def remote_error(
    code: ErrorCode, remote_type: str, message: str, remote_traceback: str, remote_args: bytes | None = None
) -> RemoteError:
    """The most specific :class:`RemoteError` for ``code``."""
    cls = _BY_CODE.get(code, RemoteError)
    return cls(message, code=code, remote_type=remote_type, remote_traceback=remote_traceback, remote_args=remote_args)


def remote_details(exc: BaseException) -> RemoteError | None:
    """The remote side of a failed call: ``exc`` itself if it is a :class:`RemoteError`, else its cause if that is one.

    A declared exception (``@component(errors=...)``) rebuilt on the caller's side is
    raised from the :class:`RemoteError` that carried it, so
    ``remote_details(out_of_stock).code`` and ``.remote_traceback`` are the server's.
    """
    if isinstance(exc, RemoteError):
        return exc
    cause = exc.__cause__
    return cause if isinstance(cause, RemoteError) else None
