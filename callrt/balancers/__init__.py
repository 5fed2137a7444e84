"""Balancers: which replica gets the next call.

A balancer is told of replicas as they become available (:meth:`Balancer.add`)
and stop being so (:meth:`Balancer.remove`), and picks one per call. All three
are synchronous and cheap: the client calls them under its own lock and never
awaits inside them, and a balancer must never call back into the client.
"""

from ._base import Balancer, BalancerFunc, Replica, RoundRobin
from ._load import FewestPending, PowerOfTwoChoices
from ._shard import ShardKeyBalancer

__all__ = (
    "Balancer",
    "BalancerFunc",
    "FewestPending",
    "PowerOfTwoChoices",
    "Replica",
    "RoundRobin",
    "ShardKeyBalancer",
)
