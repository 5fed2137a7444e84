"""Affinity (psrpc's claim-based selection): every replica claims a call, the client picks one by the rules.

Three real worker processes (tests/fanout_components.py). ``Fleet.assign(claims, gate, fail)``
claims ``claims[role]`` on each replica (a role not named declines); with ``gate`` the
slow replica's claim waits until the test opens the gate, so "a claim that has not
arrived yet" is the test's doing, never a sleep's. The call returns the role that ran it.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Sequence

import anyio
import pytest

from callrt import affinity, call, component, errors
from callrt.call import Claim, Selection
from callrt.endpoints import tcp
from callrt.interceptors import ClientCall, ClientNext, ServerCall, ServerNext
from callrt.testing import WorkerProcess
from tests.fanout_components import Fleet, closed_port, endpoints, fleet

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def workers() -> Iterator[dict[str, WorkerProcess]]:
    with fleet() as started:
        yield started


async def assign(
    workers: dict[str, WorkerProcess],
    selection: Selection | None,
    claims: dict[str, float],
    *,
    held: bool = False,
    fail: str = "",
) -> str:
    """Call ``assign`` through an affinity stub; ``held``: the slow replica's claim waits for a gate."""
    name = uuid.uuid4().hex if held else ""
    try:
        async with call.connect(list(endpoints(workers))) as client:
            # Connected first (a fan-out waits for connecting replicas): the claim windows of
            # these tests time the claims, not a fresh client's connections.
            assert len([reply async for reply in client.multi(Fleet).whoami()]) == len(workers)
            return await client.by_affinity(Fleet, selection).assign(claims, name, fail)
    finally:
        if held:
            slow = workers["slow"].endpoint
            assert slow is not None
            async with call.connect(slow) as direct:
                await direct.stub(Fleet).release(name)


async def test_the_highest_claim_wins_by_default(workers: dict[str, WorkerProcess]) -> None:
    with anyio.fail_after(10):
        assert await assign(workers, None, {"ok": 0.3, "failing": 0.6, "slow": 0.9}) == "slow"
        assert await assign(workers, None, {"ok": 0.7, "failing": 0.6, "slow": 0.1}) == "ok"


async def test_minimum(workers: dict[str, WorkerProcess]) -> None:
    with anyio.fail_after(10):
        chosen = await assign(workers, Selection(minimum=0.5), {"ok": 0.3, "failing": 0.6, "slow": 0.4})
        assert chosen == "failing"


async def test_no_claim_says_what_each_replica_answered(workers: dict[str, WorkerProcess]) -> None:
    roles = {role: worker.endpoint for role, worker in workers.items()}
    with anyio.fail_after(10):
        with pytest.raises(errors.NoClaim) as caught:
            await assign(workers, Selection(minimum=0.5), {"ok": 0.3, "slow": 0.4})
    error = caught.value
    assert isinstance(error, errors.Unreachable)  # the call was never sent: safe to retry
    message = str(error)
    assert message.startswith("tests.Fleet.assign: no replica claimed the call (3 replicas: 3 answered, 0 did not;")
    assert "minimum 0.5" in message
    assert f"{roles['ok']} claimed 0.3, below the minimum 0.5" in message
    assert f"{roles['slow']} claimed 0.4, below the minimum 0.5" in message
    assert f"{roles['failing']} declined (-1)" in message
    assert (error.answered, error.unanswered) == (3, 0)
    assert error.claims == {str(roles["ok"]): 0.3, str(roles["slow"]): 0.4, str(roles["failing"]): -1.0}


async def test_accept_first_takes_the_first_qualifying_claim(workers: dict[str, WorkerProcess]) -> None:
    """The slow replica would claim more, but its claim is held: the first one wins without it."""
    with anyio.fail_after(10):
        selection = Selection(accept_first=True, timeout=30)
        assert await assign(workers, selection, {"ok": 0.1, "slow": 1.0}, held=True) == "ok"


async def test_a_claim_at_the_maximum_wins_at_once(workers: dict[str, WorkerProcess]) -> None:
    with anyio.fail_after(10):
        selection = Selection(maximum=0.8, timeout=30)
        chosen = await assign(workers, selection, {"ok": 0.3, "failing": 0.9, "slow": 1.0}, held=True)
        assert chosen == "failing"  # at or above the maximum: the held claim is not waited for


async def test_short_circuit_after_the_first_qualifying_claim(workers: dict[str, WorkerProcess]) -> None:
    with anyio.fail_after(10):
        started = anyio.current_time()
        selection = Selection(short_circuit=0.05, timeout=30)
        assert await assign(workers, selection, {"ok": 0.5, "slow": 0.9}, held=True) == "ok"
        assert anyio.current_time() - started < 8  # the short circuit ended it, not the 30 s window


async def test_the_claim_timeout_ends_collection(workers: dict[str, WorkerProcess]) -> None:
    with anyio.fail_after(10):
        assert await assign(workers, Selection(timeout=0.5), {"ok": 0.2, "slow": 0.9}, held=True) == "ok"


async def test_no_claim_names_the_replica_that_did_not_answer(workers: dict[str, WorkerProcess]) -> None:
    slow = workers["slow"].endpoint
    with anyio.fail_after(10):
        with pytest.raises(errors.NoClaim) as caught:
            await assign(workers, Selection(timeout=0.5), {"slow": 0.9}, held=True)
    message = str(caught.value)
    assert "(3 replicas: 2 answered, 1 did not;" in message
    assert f"{slow} no answer within the claim window (0.5 s)" in message
    assert message.count("declined (-1)") == 2
    assert (caught.value.answered, caught.value.unanswered) == (2, 1)


async def test_a_custom_selection_function(workers: dict[str, WorkerProcess]) -> None:
    seen: list[Sequence[Claim]] = []

    def lowest(claims: Sequence[Claim]) -> Claim | None:
        seen.append(claims)
        return min(claims, key=lambda c: c.affinity)

    with anyio.fail_after(10):
        chosen = await assign(workers, Selection(select=lowest), {"ok": 0.3, "failing": 0.6, "slow": 0.9})
        assert chosen == "ok"
        assert sorted(c.affinity for c in seen[0]) == [0.3, 0.6, 0.9]
        # Only qualifying claims reach it: the declining replica is not among them.
        assert await assign(workers, Selection(select=lowest, minimum=0.5), {"failing": 0.6, "slow": 0.9}) == "failing"
        assert len(seen[1]) == 2

        with pytest.raises(errors.NoClaim, match="the selection function chose none of 2 qualifying claims"):
            await assign(workers, Selection(select=lambda claims: None), {"ok": 0.3, "slow": 0.9})


async def test_a_declining_replica_is_never_chosen(workers: dict[str, WorkerProcess]) -> None:
    with anyio.fail_after(10):
        # "failing" is not named: it declines; of the two others the higher wins.
        assert await assign(workers, None, {"ok": 0.2, "slow": 0.1}) == "ok"
        assert await assign(workers, None, {"ok": -5.0, "failing": -1.0, "slow": 0.0}) == "slow"  # 0 is a claim


async def test_a_failing_affinity_function_is_reported(workers: dict[str, WorkerProcess]) -> None:
    failing = workers["failing"].endpoint
    with anyio.fail_after(10):
        assert await assign(workers, None, {"ok": 0.2, "failing": 0.9}, fail="failing") == "ok"
        with pytest.raises(errors.NoClaim) as caught:
            await assign(workers, None, {"failing": 0.9}, fail="failing")
    message = str(caught.value)
    assert "(3 replicas: 2 answered, 1 did not;" in message
    assert f"{failing} failed: [unknown] (RuntimeError) the affinity function of failing failed" in message


async def test_a_method_without_an_affinity_function_claims_one(workers: dict[str, WorkerProcess]) -> None:
    with anyio.fail_after(10):
        async with call.connect(list(endpoints(workers))) as client:
            assert await client.by_affinity(Fleet).whoami() in ("ok", "failing", "slow")
            with pytest.raises(errors.NoClaim, match="claimed 1, below the minimum 2"):
                await client.by_affinity(Fleet, Selection(minimum=2)).whoami()


async def test_a_dead_replica_is_named_in_the_error(workers: dict[str, WorkerProcess]) -> None:
    dead = tcp(f"127.0.0.1:{closed_port()}")
    with anyio.fail_after(10):
        async with call.connect([*endpoints(workers), dead]) as client:
            with pytest.raises(errors.NoClaim) as caught:
                await client.by_affinity(Fleet).assign({}, "", "")
    message = str(caught.value)
    assert "(4 replicas: 3 answered, 1 did not;" in message
    assert f"{dead} failed: Unreachable: callrt.Affinity.claim: {dead} is unavailable" in message


def test_an_affinity_function_must_take_the_methods_parameters() -> None:
    with pytest.raises(errors.RegistrationError, match=r"its affinity function must take the method's parameters"):

        @component(name="tests.BadAffinity")
        class BadAffinity:
            @affinity(lambda self: 1.0)  # pyright: ignore[reportArgumentType]  (the mistake under test)
            async def pick(self, key: str) -> str:
                return key

    with pytest.raises(ValueError, match="timeout must be a positive number"):
        Selection(timeout=0)


# -- in one process (memory:// endpoints): what the server's claim handler decides ---------------


@component(name="tests.Keyed")
class Keyed:
    def __init__(self) -> None:
        self.asked: list[tuple[str, int]] = []

    async def _score(self, key: str, *, weight: int = 1) -> float:
        await anyio.lowlevel.checkpoint()  # an async affinity function
        self.asked.append((key, weight))
        return weight / 10

    @affinity(_score)
    async def pick(self, key: str, *, weight: int = 1) -> str:
        return key


async def test_the_affinity_function_gets_the_decoded_arguments_keyword_only_ones_by_name() -> None:
    keyed = Keyed()
    with anyio.fail_after(10):
        async with call.start_server("memory://affinity-keyed", keyed):
            async with call.connect("memory://affinity-keyed") as client:
                assert await client.by_affinity(Keyed).pick("a", weight=7) == "a"
                with pytest.raises(errors.NoClaim, match="claimed 0.2, below the minimum 0.5"):
                    await client.by_affinity(Keyed, Selection(minimum=0.5)).pick("b", weight=2)
    assert keyed.asked == [("a", 7), ("b", 2)]


async def test_a_replica_not_serving_the_component_declines() -> None:
    with anyio.fail_after(10):
        async with call.start_server("memory://affinity-health", Keyed()) as server:
            async with call.connect("memory://affinity-health") as client:
                server.set_health("tests.Keyed", serving=False)
                with pytest.raises(errors.NoClaim, match=r"declined \(-1\)"):
                    await client.by_affinity(Keyed).pick("a")
                server.set_health("tests.Keyed", serving=True)
                assert await client.by_affinity(Keyed).pick("a") == "a"


async def test_the_access_policy_covers_the_claimed_method() -> None:
    options = call.ServerOptions(access=lambda peer, component, method: method != "pick")
    with anyio.fail_after(10):
        async with call.start_server("memory://affinity-access", Keyed(), options=options):
            async with call.connect("memory://affinity-access") as client:
                with pytest.raises(errors.NoClaim, match=r"failed: \[permission_denied\].*does not allow this caller"):
                    await client.by_affinity(Keyed).pick("a")


async def test_a_method_the_server_does_not_serve() -> None:
    with anyio.fail_after(10):
        async with call.start_server("memory://affinity-unknown", Keyed()):
            async with call.connect("memory://affinity-unknown") as client:
                with pytest.raises(errors.NoClaim, match=r"tests.Fleet.whoami: not served here"):
                    await client.by_affinity(Fleet).whoami()


async def test_client_interceptors_wrap_affinity_calls_and_claims_carry_their_metadata() -> None:
    seen_by_server: list[tuple[str, str]] = []
    answered_by: list[str | None] = []

    async def require_tenant(request: ServerCall, next: ServerNext) -> bytes:
        tenant = request.metadata.get("tenant")
        if tenant is None:
            raise errors.PermissionDenied(f"{request.method}: no tenant")
        seen_by_server.append((request.method, tenant))
        return await next(request)

    async def add_tenant(request: ClientCall, next: ClientNext) -> object:
        result = await next(request.with_metadata({"tenant": "t1"}))
        answered_by.append(request.replica)
        return result

    server_options = call.ServerOptions(interceptors=[require_tenant])
    client_options = call.ClientOptions(interceptors=[add_tenant])
    with anyio.fail_after(10):
        async with call.start_server("memory://affinity-intercepted", Keyed(), options=server_options):
            async with call.connect("memory://affinity-intercepted", options=client_options) as client:
                assert await client.by_affinity(Keyed).pick("a") == "a"
    assert seen_by_server == [("callrt.Affinity.claim", "t1"), ("tests.Keyed.pick", "t1")]
    assert answered_by == ["memory://affinity-intercepted"]
