"""Balancers: distribution, load awareness, shard-key stability, and the edge cases."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import pytest

from callrt.balancers import (
    Balancer,
    BalancerFunc,
    FewestPending,
    PowerOfTwoChoices,
    Replica,
    RoundRobin,
    ShardKeyBalancer,
)
from callrt.context import CallOptions
from callrt.endpoints import Endpoint, tcp


@dataclass(eq=False)  # identity, like the client's replicas
class FakeReplica:
    endpoint: Endpoint
    pending: int = 0


def replicas(n: int, pending: Sequence[int] | None = None) -> list[FakeReplica]:
    return [FakeReplica(tcp(f"10.0.0.{i}:9000"), pending[i] if pending else 0) for i in range(n)]


def first(rs: Sequence[Replica], options: CallOptions | None) -> Replica | None:
    return rs[0]


ALL: list[Callable[[], Balancer]] = [
    RoundRobin,
    FewestPending,
    PowerOfTwoChoices,
    ShardKeyBalancer,
    lambda: BalancerFunc(first),
]
IDS = ["RoundRobin", "FewestPending", "PowerOfTwoChoices", "ShardKeyBalancer", "BalancerFunc"]


def filled(make: Callable[[], Balancer], rs: Sequence[FakeReplica]) -> Balancer:
    b = make()
    for r in rs:
        b.add(r)
    return b


def picks(b: Balancer, n: int, options: CallOptions | None = None) -> Counter[int]:
    got: Counter[int] = Counter()
    for _ in range(n):
        r = b.pick(options)
        assert isinstance(r, FakeReplica)
        got[int(r.endpoint.host.rsplit(".", 1)[1])] += 1
    return got


@pytest.mark.parametrize("make", ALL, ids=IDS)
def test_empty_balancer_picks_none(make: Callable[[], Balancer]) -> None:
    b = make()
    assert b.pick(None) is None
    assert b.pick(CallOptions(shard_key=7)) is None
    r = replicas(1)[0]
    b.add(r)
    b.remove(r)
    assert b.pick(None) is None
    assert b.pick(CallOptions(shard_key=7)) is None


@pytest.mark.parametrize("make", ALL, ids=IDS)
def test_remove_unknown_and_add_twice_are_no_ops(make: Callable[[], Balancer]) -> None:
    a, b_ = replicas(2)
    b = make()
    b.remove(a)
    b.add(a)
    b.add(a)
    b.remove(b_)
    assert {id(b.pick(None)) for _ in range(20)} == {id(a)}
    b.remove(a)
    assert b.pick(None) is None


@pytest.mark.parametrize("make", ALL, ids=IDS)
def test_removed_replica_is_never_picked(make: Callable[[], Balancer]) -> None:
    rs = replicas(4)
    b = filled(make, rs)
    b.remove(rs[2])
    for key in [None, *range(200)]:
        assert b.pick(CallOptions(shard_key=key)) is not rs[2]


def test_round_robin_is_even() -> None:
    b = filled(RoundRobin, replicas(5))
    assert picks(b, 1000) == dict.fromkeys(range(5), 200)


def test_fewest_pending_always_picks_a_minimum() -> None:
    rng = random.Random(1)
    rs = replicas(6)
    b = filled(FewestPending, rs)
    for _ in range(2000):
        for r in rs:
            r.pending = rng.randrange(4)
        got = b.pick(None)
        assert got is not None
        assert got.pending == min(r.pending for r in rs)


def test_fewest_pending_spreads_ties() -> None:
    rs = replicas(4, [3, 1, 1, 1])
    b = filled(FewestPending, rs)
    assert picks(b, 300) == {1: 100, 2: 100, 3: 100}
    # All idle (calls finish before the next pick): plain rotation.
    for r in rs:
        r.pending = 0
    assert picks(b, 400) == dict.fromkeys(range(4), 100)


def test_fewest_pending_follows_load_as_calls_start() -> None:
    # Each pick starts a call that never ends: the load stays level.
    rs = replicas(3)
    b = filled(FewestPending, rs)
    for _ in range(30):
        got = b.pick(None)
        assert isinstance(got, FakeReplica)
        got.pending += 1
    assert [r.pending for r in rs] == [10, 10, 10]


def test_fewest_pending_insertion_order_is_randomised() -> None:
    # Clients that add the same replicas in the same order should not all
    # send their first call to the same one.
    firsts = set()
    for seed in range(20):
        b = filled(lambda seed=seed: FewestPending(seed=seed), replicas(5))
        got = b.pick(None)
        assert got is not None
        firsts.add(got.endpoint)
    assert len(firsts) > 1


def test_power_of_two_choices_prefers_less_loaded() -> None:
    b = filled(lambda: PowerOfTwoChoices(seed=42), replicas(3, [0, 5, 10]))
    got = picks(b, 3000)
    # Pairs {0,5} and {0,10} go to 0, {5,10} to 1: 2/3, 1/3, never the busiest.
    assert got[2] == 0
    assert 1850 <= got[0] <= 2150
    assert 850 <= got[1] <= 1150


def test_power_of_two_choices_spreads_equal_load_and_is_seedable() -> None:
    got = picks(filled(lambda: PowerOfTwoChoices(seed=7), replicas(4)), 4000)
    assert all(850 <= got[i] <= 1150 for i in range(4))
    one = picks(filled(lambda: PowerOfTwoChoices(seed=random.Random(3)), replicas(4)), 50)
    two = picks(filled(lambda: PowerOfTwoChoices(seed=3), replicas(4)), 50)
    assert one == two


def test_power_of_two_choices_single_replica() -> None:
    (r,) = replicas(1, [9])
    b = filled(PowerOfTwoChoices, [r])
    assert b.pick(None) is r


def test_balancer_func_gets_replicas_and_options() -> None:
    seen: list[tuple[int, CallOptions | None]] = []

    def by_key(rs: Sequence[Replica], options: CallOptions | None) -> Replica | None:
        seen.append((len(rs), options))
        key = options.shard_key if options and options.shard_key is not None else 0
        return rs[key % len(rs)]

    rs = replicas(3)
    b = filled(lambda: BalancerFunc(by_key), rs)
    opts = CallOptions(shard_key=4)
    assert b.pick(opts) is rs[1]
    assert b.pick(None) is rs[0]
    assert seen == [(3, opts), (3, None)]


def test_shard_key_is_stable_and_independent_of_add_order() -> None:
    rs = replicas(5)
    a = filled(ShardKeyBalancer, rs)
    b = filled(ShardKeyBalancer, list(reversed(rs)))
    for key in range(2000):
        opts = CallOptions(shard_key=key)
        got = a.pick(opts)
        assert got is a.pick(opts)
        assert got is b.pick(opts)


def test_shard_keys_spread_evenly() -> None:
    b = filled(ShardKeyBalancer, replicas(5))
    got = Counter(id(b.pick(CallOptions(shard_key=k))) for k in range(10_000))
    assert len(got) == 5
    assert all(1700 <= n <= 2300 for n in got.values())


def test_shard_keys_handle_negative_and_huge_keys() -> None:
    b = filled(ShardKeyBalancer, replicas(3))
    for key in (-1, -(2**70), 2**64 - 1, 2**80):
        assert b.pick(CallOptions(shard_key=key)) is b.pick(CallOptions(shard_key=key))


def test_shard_keys_move_little_when_replicas_change() -> None:
    keys = range(10_000)
    n = 5
    rs = replicas(n + 1)
    b = filled(ShardKeyBalancer, rs[:n])

    def owners() -> list[Replica | None]:
        return [b.pick(CallOptions(shard_key=k)) for k in keys]

    before = owners()

    # Removing one replica moves only its keys: about 1/N of them.
    gone = rs[0]
    b.remove(gone)
    after = owners()
    moved = [k for k in keys if before[k] is not after[k]]
    assert all(before[k] is gone for k in moved)
    assert all(after[k] is not gone for k in keys)
    assert len(moved) / len(keys) <= 1 / n + 0.02

    # Adding it back restores the old assignment exactly.
    b.add(gone)
    assert owners() == before

    # Adding a new replica moves about 1/(N+1) of the keys, all onto it.
    b.add(rs[n])
    grown = owners()
    moved = [k for k in keys if before[k] is not grown[k]]
    assert all(grown[k] is rs[n] for k in moved)
    assert 1 / (n + 1) - 0.02 <= len(moved) / len(keys) <= 1 / (n + 1) + 0.02


def test_shard_balancer_without_key_uses_fallback() -> None:
    rs = replicas(4)
    assert picks(filled(ShardKeyBalancer, rs), 400, CallOptions()) == dict.fromkeys(range(4), 100)
    assert picks(filled(ShardKeyBalancer, rs), 400) == dict.fromkeys(range(4), 100)

    fallback = FewestPending()
    b = filled(lambda: ShardKeyBalancer(fallback), rs)
    rs[0].pending = rs[1].pending = rs[3].pending = 5
    assert b.pick(None) is rs[2]
    b.remove(rs[2])  # the fallback is told too
    assert fallback.pick(None) is not rs[2]
