"""Cancels and deadlines reach handlers in every dispatch mode, even before the handler starts."""

from __future__ import annotations

import anyio
import pytest

from callrt import call, component
from callrt.protocol import (
    Cancel,
    Error,
    FrameDecoder,
    Hello,
    Request,
    Response,
    encode_frame,
)

pytestmark = pytest.mark.anyio


@component(name="tests.Sleeper")
class Sleeper:
    async def sleep(self, seconds: float) -> float:
        await anyio.sleep(seconds)
        return seconds

    async def quick(self) -> int:
        return 1


SLEEP = call.make_method_key("tests.Sleeper", "sleep")
QUICK = call.make_method_key("tests.Sleeper", "quick")


def _args(seconds: float) -> bytes:
    import msgspec

    return msgspec.msgpack.encode((seconds,))


async def _exchange(endpoint: call.Endpoint, frames: list[object], expect: int) -> list[object]:
    """Send ``frames`` in one write after the hello; collect ``expect`` reply frames."""
    stream = await anyio.connect_tcp(endpoint.host, endpoint.port)
    async with stream:
        await stream.send(encode_frame(Hello(1, 1, 1 << 20)) + b"".join(encode_frame(f) for f in frames))  # type: ignore[arg-type]
        decoder = FrameDecoder(expect="hello_reply")
        replies: list[object] = []
        while len(replies) < expect + 1:
            decoder.receive_data(await stream.receive())
            while (frame := decoder.next_frame()) is not None:
                replies.append(frame)
        return replies[1:]


@pytest.mark.parametrize("inline", [20e-6, 0.0, -1.0], ids=["inline", "handoff-at-block", "task-per-call"])
@pytest.mark.parametrize("transport", ["auto", "stream"])
async def test_cancel_sent_with_its_request_is_not_lost(inline: float, transport: str, anyio_backend: object) -> None:
    options = call.ServerOptions(inline_handler_duration=inline, transport=transport)  # type: ignore[arg-type]
    with anyio.fail_after(10):
        async with call.start_server("tcp://127.0.0.1:0", Sleeper(), options=options) as server:
            replies = await _exchange(
                server.endpoint,
                [
                    Request(1, SLEEP, _args(30.0)),
                    Request(2, SLEEP, _args(30.0)),
                    Cancel(2),
                    Cancel(1),
                    Request(3, QUICK, b"\x90"),
                ],
                expect=3,
            )
    by_id = {f.id: f for f in replies}  # type: ignore[attr-defined]
    assert isinstance(by_id[3], Response)
    for request_id in (1, 2):
        assert isinstance(by_id[request_id], Error) and by_id[request_id].code == "canceled", by_id


@pytest.mark.parametrize("inline", [20e-6, -1.0], ids=["inline", "task-per-call"])
@pytest.mark.parametrize("transport", ["auto", "stream"])
async def test_server_enforces_the_deadline(inline: float, transport: str, anyio_backend: object) -> None:
    options = call.ServerOptions(inline_handler_duration=inline, transport=transport)  # type: ignore[arg-type]
    with anyio.fail_after(10):
        async with call.start_server("tcp://127.0.0.1:0", Sleeper(), options=options) as server:
            start = anyio.current_time()
            replies = await _exchange(server.endpoint, [Request(1, SLEEP, _args(30.0), deadline_us=100_000)], expect=1)
            elapsed = anyio.current_time() - start
    (reply,) = replies
    assert isinstance(reply, Error) and reply.code == "deadline_exceeded"
    assert 0.09 <= elapsed < 2.0


@component(name="tests.Tagged")
class Tagged:
    async def whose(self, tag: int, pause: float) -> tuple[int, int]:
        """The tag the call was made with, as current_call() sees it before and after a suspension."""
        before = call.current_call()
        if pause >= 0:
            await anyio.sleep(pause)
        after = call.current_call()
        assert before is not None and after is not None
        return int(before.metadata["tag"]), int(after.metadata["tag"])


@pytest.mark.parametrize("inline", [20e-6, 0.0], ids=["inline", "handoff-at-block"])
async def test_cancelled_calls_without_a_deadline_leave_nothing_behind(inline: float, anyio_backend: object) -> None:
    """Calls without a deadline (on asyncio, awaited by the connection's dispatcher task itself) are
    cancelled wherever the cancel finds them: queued, suspended, or suspended but not yet noticed.

    Afterwards every call is accounted for on the server and later calls see their own call.
    """
    options = call.ServerOptions(inline_handler_duration=inline)
    with anyio.fail_after(20):
        async with call.start_server("tcp://127.0.0.1:0", Tagged(), options=options) as server:
            async with call.connect(str(server.endpoint)) as conn:
                stub = conn.stub(Tagged)

                async def tagged(tag: int, pause: float) -> tuple[int, int]:
                    options = call.CallOptions(metadata={"tag": str(tag)})
                    return await call.with_options(stub.whose, options)(tag, pause)  # type: ignore[no-any-return]

                answered: list[tuple[int, int]] = []
                half = anyio.Event()

                async def run(tag: int, pause: float) -> None:
                    answered.append(await tagged(tag, pause))
                    if len(answered) == 150:
                        half.set()

                for round_ in range(5):
                    async with anyio.create_task_group() as tg:
                        for i in range(300):  # some answer at once, some yield once, some wait 10 s
                            tg.start_soon(run, i, (-1.0, 0.0, 10.0)[i % 3])
                        await half.wait()
                        tg.cancel_scope.cancel()  # no deadline: each call is cancelled by a cancel frame
                    assert all(before == after for before, after in answered), round_
                    answered.clear()
                    half = anyio.Event()
                    # Round trips behind the cancel frames: by their end every cancelled call has ended.
                    results = [await tagged(i, (-1.0, 0.0, 0.001)[i % 3]) for i in range(30)]
                    assert results == [(i, i) for i in range(30)]
                    assert server.calls == 0, round_
