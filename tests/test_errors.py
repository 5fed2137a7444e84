"""The error tree, error codes and their HTTP/gRPC mappings, and how exceptions travel."""

from __future__ import annotations

import traceback

import pytest

from callrt import errors
from callrt.connection.server import error_frame
from callrt.errors import (
    GRPC_STATUS,
    HTTP_STATUS,
    CallrtError,
    Cancelled,
    ClosedError,
    CommunicationError,
    DeadlineExceeded,
    ErrorCode,
    Internal,
    InvalidArgument,
    LocalProtocolError,
    PermissionDenied,
    ProtocolError,
    RegistrationError,
    RemoteError,
    RemoteProtocolError,
    Unavailable,
    UnknownMethod,
    Unreachable,
    remote_error,
)
from callrt.protocol import HEADER_SIZE, Error, FrameDecoder, encode_frame

REMOTE_SUBCLASSES = [
    InvalidArgument,
    UnknownMethod,
    DeadlineExceeded,
    Cancelled,
    Unavailable,
    PermissionDenied,
    Internal,
]

# -- the tree --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cls", "bases"),
    [
        (CommunicationError, [CallrtError]),
        (Unreachable, [CommunicationError, CallrtError]),
        (ProtocolError, [CommunicationError, CallrtError]),
        (LocalProtocolError, [ProtocolError, CommunicationError, CallrtError]),
        (RemoteProtocolError, [ProtocolError, CommunicationError, CallrtError]),
        (ClosedError, [CallrtError]),
        (RegistrationError, [CallrtError]),
        (RemoteError, [CallrtError]),
        *[(cls, [RemoteError, CallrtError]) for cls in REMOTE_SUBCLASSES],
        (DeadlineExceeded, [TimeoutError, OSError]),
        (CallrtError, [Exception]),
    ],
)
def test_subclass_relations(cls: type, bases: list[type]) -> None:
    for base in bases:
        assert issubclass(cls, base), (cls, base)


@pytest.mark.parametrize(
    ("cls", "not_bases"),
    [
        (ClosedError, [CommunicationError, RemoteError]),
        (RegistrationError, [CommunicationError, RemoteError]),
        (RemoteError, [CommunicationError]),
        (CommunicationError, [RemoteError]),
        (Unreachable, [ProtocolError]),
        (LocalProtocolError, [RemoteProtocolError]),
        (RemoteProtocolError, [LocalProtocolError]),
        *[(cls, [CommunicationError, TimeoutError]) for cls in REMOTE_SUBCLASSES if cls is not DeadlineExceeded],
    ],
)
def test_disjoint_branches(cls: type, not_bases: list[type]) -> None:
    for base in not_bases:
        assert not issubclass(cls, base), (cls, base)


def test_instances() -> None:
    assert isinstance(Unreachable("x"), CommunicationError)
    assert isinstance(RemoteProtocolError("x"), CommunicationError)
    assert isinstance(LocalProtocolError("x"), ProtocolError)
    exc = DeadlineExceeded("too slow")
    assert isinstance(exc, TimeoutError)
    assert isinstance(exc, RemoteError)
    assert exc.code is ErrorCode.DEADLINE_EXCEEDED
    assert str(exc) == "[deadline_exceeded] too slow"


def test_deadline_exceeded_caught_as_timeout_error() -> None:
    with pytest.raises(TimeoutError):
        raise DeadlineExceeded("late")


def test_protocol_error_is_abstract() -> None:
    with pytest.raises(TypeError, match="abstract"):
        ProtocolError("x")
    # Its subclasses are concrete and keep their arguments.
    assert LocalProtocolError("a", 1).args == ("a", 1)
    assert RemoteProtocolError("b").args == ("b",)

    class Custom(ProtocolError):
        pass

    assert Custom("c").args == ("c",)


def test_every_exported_exception_is_a_callrt_error() -> None:
    for name in errors.__all__:
        obj = getattr(errors, name)
        if isinstance(obj, type) and issubclass(obj, BaseException):
            assert issubclass(obj, CallrtError), name


# -- codes -----------------------------------------------------------------------


def test_every_code_has_http_and_grpc_status() -> None:
    assert set(HTTP_STATUS) == set(ErrorCode)
    assert set(GRPC_STATUS) == set(ErrorCode)
    for code in ErrorCode:
        assert 400 <= HTTP_STATUS[code] <= 599, code
        assert 1 <= GRPC_STATUS[code] <= 16, code  # never OK (0)


@pytest.mark.parametrize(
    ("code", "http", "grpc"),
    [
        (ErrorCode.UNKNOWN, 500, 2),
        (ErrorCode.INVALID_ARGUMENT, 400, 3),
        (ErrorCode.DEADLINE_EXCEEDED, 504, 4),
        (ErrorCode.NOT_FOUND, 404, 5),
        (ErrorCode.ALREADY_EXISTS, 409, 6),
        (ErrorCode.PERMISSION_DENIED, 403, 7),
        (ErrorCode.RESOURCE_EXHAUSTED, 429, 8),
        (ErrorCode.FAILED_PRECONDITION, 412, 9),
        (ErrorCode.ABORTED, 409, 10),
        (ErrorCode.OUT_OF_RANGE, 400, 11),
        (ErrorCode.UNIMPLEMENTED, 501, 12),
        (ErrorCode.INTERNAL, 500, 13),
        (ErrorCode.UNAVAILABLE, 503, 14),
        (ErrorCode.DATA_LOSS, 500, 15),
        (ErrorCode.UNAUTHENTICATED, 401, 16),
        (ErrorCode.CANCELED, 408, 1),
    ],
)
def test_known_mappings(code: ErrorCode, http: int, grpc: int) -> None:
    assert HTTP_STATUS[code] == http
    assert GRPC_STATUS[code] == grpc
    exc = RemoteError("m", code=code)
    assert exc.http_status == http
    assert exc.grpc_status == grpc


def test_code_values_are_psrpc_strings() -> None:
    assert ErrorCode.MALFORMED_RESPONSE.value == "malformed_result"  # psrpc's spelling
    assert ErrorCode.CANCELED.value == "canceled"
    assert len({c.value for c in ErrorCode}) == len(ErrorCode)
    assert ErrorCode.NOT_FOUND == "not_found"  # a str enum


@pytest.mark.parametrize("code", list(ErrorCode))
def test_parse_known(code: ErrorCode) -> None:
    assert ErrorCode.parse(code.value) is code


@pytest.mark.parametrize("value", ["", "UNKNOWN", "Internal", "teapot", "not found", "internal "])
def test_parse_unknown(value: str) -> None:
    assert ErrorCode.parse(value) is ErrorCode.UNKNOWN


# -- RemoteError -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("cls", "code"),
    [
        (RemoteError, ErrorCode.UNKNOWN),
        (InvalidArgument, ErrorCode.INVALID_ARGUMENT),
        (UnknownMethod, ErrorCode.UNIMPLEMENTED),
        (DeadlineExceeded, ErrorCode.DEADLINE_EXCEEDED),
        (Cancelled, ErrorCode.CANCELED),
        (Unavailable, ErrorCode.UNAVAILABLE),
        (PermissionDenied, ErrorCode.PERMISSION_DENIED),
        (Internal, ErrorCode.INTERNAL),
    ],
)
def test_default_codes(cls: type[RemoteError], code: ErrorCode) -> None:
    exc = cls("msg")
    assert exc.code is code
    assert exc.message == "msg"
    assert exc.remote_type == ""
    assert exc.remote_traceback == ""
    assert exc.args == ("msg",)


def test_explicit_code_overrides_default() -> None:
    exc = InvalidArgument("m", code=ErrorCode.MALFORMED_REQUEST)
    assert exc.code is ErrorCode.MALFORMED_REQUEST


def test_str_format() -> None:
    assert str(RemoteError("boom")) == "[unknown] boom"
    assert str(RemoteError("boom", remote_type="ValueError")) == "[unknown] (ValueError) boom"
    assert str(Internal("x", remote_type="a.B", remote_traceback="tb")) == "[internal] (a.B) x"
    assert str(RemoteError(code=ErrorCode.NOT_FOUND)) == "[not_found] "
    assert str(RemoteError("m", code=ErrorCode.NOT_FOUND, remote_type="KeyError")) == "[not_found] (KeyError) m"


@pytest.mark.parametrize(
    ("code", "cls"),
    [
        (ErrorCode.INVALID_ARGUMENT, InvalidArgument),
        (ErrorCode.MALFORMED_REQUEST, InvalidArgument),
        (ErrorCode.UNIMPLEMENTED, UnknownMethod),
        (ErrorCode.DEADLINE_EXCEEDED, DeadlineExceeded),
        (ErrorCode.CANCELED, Cancelled),
        (ErrorCode.UNAVAILABLE, Unavailable),
        (ErrorCode.INTERNAL, Internal),
        (ErrorCode.MALFORMED_RESPONSE, Internal),
        (ErrorCode.UNKNOWN, RemoteError),
        (ErrorCode.NOT_FOUND, RemoteError),
        (ErrorCode.PERMISSION_DENIED, PermissionDenied),
        (ErrorCode.DATA_LOSS, RemoteError),
    ],
)
def test_remote_error_picks_subclass(code: ErrorCode, cls: type[RemoteError]) -> None:
    exc = remote_error(code, "pkg.Type", "message", "Traceback ...")
    assert type(exc) is cls
    assert exc.code is code  # the original code is kept, not the class default
    assert exc.remote_type == "pkg.Type"
    assert exc.message == "message"
    assert exc.remote_traceback == "Traceback ..."


def test_remote_error_for_every_code() -> None:
    for code in ErrorCode:
        exc = remote_error(code, "", "", "")
        assert isinstance(exc, RemoteError)
        assert exc.code is code


# -- error_frame -----------------------------------------------------------------


def raised(exc: BaseException) -> BaseException:
    """``exc`` with a traceback, as a handler would raise it."""
    try:
        raise exc
    except BaseException as caught:
        return caught


def round_trip(frame: Error) -> Error:
    decoder = FrameDecoder()
    decoder.receive_data(encode_frame(frame))
    decoded = decoder.next_frame()
    assert decoded == frame
    return decoded  # type: ignore[return-value]


@pytest.mark.parametrize("cls", [RemoteError, *REMOTE_SUBCLASSES])
def test_error_frame_keeps_remote_error_code(cls: type[RemoteError]) -> None:
    frame = error_frame(7, cls("nope"))
    assert frame.id == 7
    assert frame.code == cls.default_code.value
    assert frame.message == "nope"
    assert frame.remote_type == f"callrt.errors.{cls.__qualname__}"
    round_trip(frame)


def test_error_frame_keeps_explicit_code_and_relayed_details() -> None:
    exc = RemoteError("gone", code=ErrorCode.NOT_FOUND, remote_type="shop.NoSuchItem", remote_traceback="remote tb")
    frame = error_frame(1, raised(exc))
    assert (frame.code, frame.remote_type, frame.message, frame.traceback) == (
        "not_found",
        "shop.NoSuchItem",
        "gone",
        "remote tb",
    )


def test_error_frame_of_raised_remote_error_without_traceback_gets_the_local_one() -> None:
    # A handler's own RemoteError (callrt's own rejections, below, carry none).
    frame = error_frame(1, raised(RemoteError("bad qty", code=ErrorCode.INVALID_ARGUMENT)))
    assert frame.code == "invalid_argument"
    assert "Traceback" in frame.traceback
    assert "bad qty" in frame.traceback


def test_callrts_own_rejections_carry_no_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    """A flood of bad calls must not cost a formatted traceback each (it was ~50 µs a call)."""
    formatted: list[BaseException] = []
    monkeypatch.setattr(traceback, "format_exception", lambda exc: formatted.append(exc) or [])
    for exc in (InvalidArgument("qty: expected int"), UnknownMethod("x.y"), DeadlineExceeded("late"), Cancelled("no")):
        frame = error_frame(1, raised(exc))
        assert (frame.traceback, frame.message) == ("", exc.message)
    assert formatted == []


def test_tracebacks_are_withheld_when_asked() -> None:
    frame = error_frame(1, raised(ValueError("/home/app/secret.py went wrong")), tracebacks=False)
    assert (frame.code, frame.remote_type, frame.traceback) == ("unknown", "ValueError", "")


def test_an_error_frame_fits_the_callers_maximum_frame() -> None:
    exc = raised(ValueError("m" * 5000))
    frame = error_frame(1, exc, max_size=1024)
    assert len(encode_frame(frame)) - HEADER_SIZE <= 1024
    assert frame.message.startswith("mmm") and frame.message.endswith("[cut]")


@pytest.mark.parametrize("exc", [Unreachable("no replicas"), RemoteProtocolError("garbage"), LocalProtocolError("big")])
def test_error_frame_of_communication_error_is_unavailable(exc: CommunicationError) -> None:
    frame = error_frame(2, raised(exc))
    assert frame.code == ErrorCode.UNAVAILABLE.value
    assert frame.message == str(exc)
    assert frame.remote_type == f"callrt.errors.{type(exc).__qualname__}"
    # Rebuilt on the caller's side it is a RemoteError, never a CommunicationError of the outer call.
    rebuilt = remote_error(ErrorCode.parse(frame.code), frame.remote_type, frame.message, frame.traceback)
    assert isinstance(rebuilt, Unavailable)
    assert not isinstance(rebuilt, CommunicationError)


class ShopError(Exception):
    pass


@pytest.mark.parametrize(
    ("exc", "remote_type"),
    [
        (ValueError("bad value"), "ValueError"),
        (KeyError("k"), "KeyError"),
        (ShopError("out of stock"), f"{__name__}.ShopError"),
        (ClosedError("closed"), "callrt.errors.ClosedError"),
        (RegistrationError("dup"), "callrt.errors.RegistrationError"),
    ],
)
def test_error_frame_of_other_exception_is_unknown(exc: Exception, remote_type: str) -> None:
    frame = error_frame(3, raised(exc))
    assert frame.code == ErrorCode.UNKNOWN.value
    assert frame.remote_type == remote_type
    assert frame.message == str(exc)
    assert frame.traceback.startswith("Traceback (most recent call last):")
    assert "def raised" not in frame.traceback  # formatted frames, not source
    assert "in raised" in frame.traceback
    assert frame.traceback.rstrip().endswith(f"{remote_type.rsplit('.', 1)[-1]}: {exc}")
    round_trip(frame)


def test_error_frame_of_exception_never_raised() -> None:
    frame = error_frame(4, ValueError("v"))
    assert frame.code == "unknown"
    assert frame.traceback.strip() == "ValueError: v"


def test_error_frame_with_chained_exception_includes_the_cause() -> None:
    try:
        try:
            raise KeyError("inner")
        except KeyError as inner:
            raise ValueError("outer") from inner
    except ValueError as exc:
        frame = error_frame(5, exc)
    assert "KeyError: 'inner'" in frame.traceback
    assert "ValueError: outer" in frame.traceback


@pytest.mark.parametrize(
    "exc",
    [ValueError("bad name \udcff"), RemoteError("lone \ud800 surrogate"), ValueError("fine ünïcode")],
)
def test_error_frame_is_always_encodable(exc: Exception) -> None:
    """Exception text can hold lone surrogates (surrogateescape'd paths); the reply must still go out."""
    frame = round_trip(error_frame(6, raised(exc)))
    assert frame.message.encode("utf-8")
    if "ü" in str(exc):
        assert frame.message == str(exc)
