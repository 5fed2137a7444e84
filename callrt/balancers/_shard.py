"""Shard-key routing: calls with the same ``shard_key`` go to the same replica.

Rendezvous (highest random weight) hashing: each replica scores every key
with a hash seeded by the replica's endpoint, and the highest score wins.
When one of N replicas goes away only its keys move (about 1/N of them), and
a new replica takes about 1/(N+1) of the keys, all from the others. Scores
depend only on the key and the endpoint, so every client that sees the same
replicas routes a key to the same one, whatever order it learned of them in.
"""

from __future__ import annotations

import xxhash

from ..context import CallOptions
from ._base import Balancer, Replica, RoundRobin

__all__ = ("ShardKeyBalancer",)

_MASK64 = (1 << 64) - 1


class ShardKeyBalancer(Balancer):
    """Rendezvous hashing on ``options.shard_key``; calls without one go to ``fallback``.

    :param fallback: the balancer for calls without a shard key (default:
        :class:`RoundRobin`). It is told of every replica too.
    """

    def __init__(self, fallback: Balancer | None = None) -> None:
        self._fallback = fallback if fallback is not None else RoundRobin()
        self._replicas: list[Replica] = []
        self._seeds: list[int] = []

    def add(self, replica: Replica) -> None:
        if replica not in self._replicas:
            self._replicas.append(replica)
            self._seeds.append(xxhash.xxh64_intdigest(str(replica.endpoint).encode()))
        self._fallback.add(replica)

    def remove(self, replica: Replica) -> None:
        try:
            i = self._replicas.index(replica)
        except ValueError:
            pass
        else:
            del self._replicas[i]
            del self._seeds[i]
        self._fallback.remove(replica)

    def pick(self, options: CallOptions | None) -> Replica | None:
        key = options.shard_key if options is not None else None
        if key is None:
            return self._fallback.pick(options)
        if not self._replicas:
            return None
        data = (key & _MASK64).to_bytes(8, "little")
        scores = [xxhash.xxh64_intdigest(data, seed) for seed in self._seeds]
        return self._replicas[scores.index(max(scores))]
