from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Protocol

from ..context import CallOptions
from ..endpoints import Endpoint


class Replica(Protocol):
    """What a balancer sees of a replica: its endpoint and its exact count of calls in flight."""

    @property
    def endpoint(self) -> Endpoint: ...

    @property
    def pending(self) -> int: ...


class Balancer(ABC):
    """Picks a replica for each call among the available ones it has been given."""

    @abstractmethod
    def add(self, replica: Replica) -> None:
        """A replica became available."""

    @abstractmethod
    def remove(self, replica: Replica) -> None:
        """A replica stopped being available (draining, failed, or gone)."""

    @abstractmethod
    def pick(self, options: CallOptions | None) -> Replica | None:
        """The replica for the next call, or ``None`` when there is none."""


class RoundRobin(Balancer):
    """Each available replica in turn; ignores shard keys."""

    def __init__(self) -> None:
        self._replicas: list[Replica] = []
        self._next = 0

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
        if not replicas:
            return None
        i = self._next % len(replicas)
        self._next = i + 1
        return replicas[i]


class BalancerFunc(Balancer):
    """A balancer from a plain function ``pick(replicas, options) -> replica | None``."""

    def __init__(self, pick: Callable[[Sequence[Replica], CallOptions | None], Replica | None]) -> None:
        self._pick = pick
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
        return self._pick(tuple(self._replicas), options) if self._replicas else None
