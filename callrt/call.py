"""The ``call`` namespace: everything needed to serve components and call them.

``from callrt import call`` then ``call.serve(...)``, ``call.connect(...)``,
``call.ConstantResolver``, ``call.RoundRobin`` and the rest, as in Service
Weaver's ``call`` package.
"""

from __future__ import annotations

from .balancers import Balancer, BalancerFunc, Replica, RoundRobin
from .client import Connection, ReplicaState, connect
from .endpoints import Endpoint, parse_endpoint, tcp, unix
from .keys import Handler, HandlerMap, MethodKey, make_method_key
from .options import CallOptions, ClientOptions, RetryPolicy, ServerOptions
from .registry import Registrar
from .resolvers import ConstantResolver, Resolver, Version
from .server import CallContext, Server, current_call, serve, start_server

__all__ = (
    "Balancer",
    "BalancerFunc",
    "CallContext",
    "CallOptions",
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
    "RetryPolicy",
    "RoundRobin",
    "Server",
    "ServerOptions",
    "Version",
    "connect",
    "current_call",
    "make_method_key",
    "parse_endpoint",
    "serve",
    "start_server",
    "tcp",
    "unix",
)
