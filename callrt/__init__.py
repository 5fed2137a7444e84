"""callrt: a component RPC runtime for Python.

Write plain classes marked ``@component``; host them in a worker with
``call.serve()``; call them through typed stubs from ``call.connect(resolver)``.

The package is built in layers; a module imports only from layers below its
own (``[tool.importlinter]`` in pyproject.toml checks it), top to bottom:

================================  ================================================
``__main__``                      ``python -m callrt``
``cli``, ``testing``              the ``callrt`` command; the kit for tests:
                                  worker processes, fault proxy
``call``                          the public namespace (``from callrt import call``)
``server``, ``client/``           ``serve()``; ``connect()``, replicas, retries, stubs,
                                  streams, fan-out, affinity
``health``, ``reflection``,       built-in components every server answers
``claims``                        (``claims``: ``@affinity`` and ``callrt.Affinity``)
``transport/``                    the I/O shells: asyncio Protocol, anyio streams,
                                  in-memory; one ``Transport`` interface
``connection/``                   one connection's protocol logic, no sockets;
                                  streams' flow control
``options``                       server and client settings
``interceptors``                  chains of async wrappers around calls
``balancers/``, ``resolvers/``    picking a replica; finding endpoints
``registry``                      servers announcing themselves
``handlers``                      the HandlerMap: method key to handler
``component``                     ``@component``, method specs and codecs
``access``                        access policies: who may call which method
``context``, ``tracing``          per-call values; W3C trace context
``protocol``, ``compression``,    the sans-IO wire codec, payload codecs (zlib, lz4,
``keys``, ``endpoints``,          zstd), method keys, addresses, TLS contexts
``tls``, ...                      from certificate files
``errors``                        the error tree
================================  ================================================
"""

from __future__ import annotations

import logging

from . import call, errors
from .claims import affinity
from .component import component, inline, interface, not_retriable
from .runner import run

__all__ = ("affinity", "call", "component", "errors", "inline", "interface", "not_retriable", "run")

# A library logs; the application decides where it goes. Without this, Python's last-resort
# handler would print callrt's warnings to stderr of programs that never configured logging.
logging.getLogger("callrt").addHandler(logging.NullHandler())
__version__ = "0.1.0"
