"""Load-aware balancers: send the next call where the fewest calls are in flight.

Both read ``replica.pending`` at pick time; the client keeps it exact, so
there is no bookkeeping here beyond the list of available replicas.
"""

from __future__ import annotations

import random

from ..context import CallOptions
from ._base import Balancer, Replica

__all__ = ("FewestPending", "PowerOfTwoChoices")


def _rng(seed: int | random.Random | None) -> random.Random:
    return seed if isinstance(seed, random.Random) else random.Random(seed)


class FewestPending(Balancer):
    """The available replica with the fewest calls in flight.

    Ties go to the first such replica after the last one picked, so equally
    loaded replicas take turns. Replicas are inserted at random positions
    (YARPC's fix for herding, PR #1647): clients that learn of the same
    replicas in the same order do not all start on the same one.
    """

    def __init__(self, *, seed: int | random.Random | None = None) -> None:
        self._rng = _rng(seed)
        self._replicas: list[Replica] = []
        self._next = 0

    def add(self, replica: Replica) -> None:
        if replica not in self._replicas:
            self._replicas.insert(self._rng.randint(0, len(self._replicas)), replica)

    def remove(self, replica: Replica) -> None:
        try:
            self._replicas.remove(replica)
        except ValueError:
            pass

    def pick(self, options: CallOptions | None) -> Replica | None:
        replicas = self._replicas
        n = len(replicas)
        if not n:
            return None
        start = self._next % n
        best_i = start
        best = replicas[start].pending
        if best > 0:
            for k in range(1, n):
                i = (start + k) % n
                pending = replicas[i].pending
                if pending < best:
                    best_i, best = i, pending
                    if pending <= 0:  # nothing beats an idle replica
                        break
        self._next = best_i + 1
        return replicas[best_i]


class PowerOfTwoChoices(Balancer):
    """Of two distinct replicas chosen at random, the one with fewer calls in flight.

    Nearly as good as fewest-pending at spreading load, and it never sends
    everything to one replica whose count is stale or briefly low.
    """

    def __init__(self, *, seed: int | random.Random | None = None) -> None:
        self._rng = _rng(seed)
        self._replicas: list[Replica] = []

    def add(self, replica: Replica) -> None:
        if replica not in self._replicas:
            self._replicas.append(replica)

    def remove(self, replica: Replica) -> None:
        try:
            self._replicas.remove(replica)
        except ValueError:
            pass

    def pick(self, options: CallOptions | None) -> Replica | None:
        replicas = self._replicas
        n = len(replicas)
        if n <= 1:
            return replicas[0] if n else None
        i = self._rng.randrange(n)
        j = self._rng.randrange(n - 1)
        if j >= i:  # two distinct indices without rejection sampling
            j += 1
        a, b = replicas[i], replicas[j]
        return b if b.pending < a.pending else a
