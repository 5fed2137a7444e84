"""The ``call`` namespace: everything needed to serve components and call them.

``from callrt import call`` then ``call.serve(...)``, ``call.connect(...)``,
``call.ConstantResolver``, ``call.RoundRobin`` and the rest, as in Service
Weaver's ``call`` package.
"""

from __future__ import annotations

from .balancers import Balancer, BalancerFunc, Replica, RoundRobin
from .client import Client, ReplicaState, connect
from .client.affinity import Claim, Selection
from .client.fanout import Replies, Reply
from .client.stubs import with_options
from .connection.server import Server
from .context import CallContext, CallOptions, current_call
from .endpoints import Endpoint, memory, parse_endpoint, tcp, unix
from .handlers import Handler, HandlerMap
from .keys import MethodKey, make_method_key
from .options import ClientOptions, RetryPolicy, ServerOptions
from .registry import Registrar
from .resolvers import ConstantResolver, Resolver, Version
from .server import serve, start_server

#: The name :class:`Client` had before 0.2; kept so that existing annotations still work.
Connection = Client

__all__ = (
    "Balancer",
    "BalancerFunc",
    "CallContext",
    "CallOptions",
    "Claim",
    "Client",
    "ClientOptions",
    "Connection",
    "ConstantResolver",
    "Endpoint",
    "Handler",
    "HandlerMap",
    "MethodKey",
    "Registrar",
    "Replica",
    "ReplicaState",
    "Resolver",
    "Replies",
    "Reply",
    "RetryPolicy",
    "RoundRobin",
    "Selection",
    "Server",
    "ServerOptions",
    "Version",
    "connect",
    "current_call",
    "make_method_key",
    "memory",
    "parse_endpoint",
    "serve",
    "start_server",
    "tcp",
    "unix",
    "with_options",
)
