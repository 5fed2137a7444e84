"""callrt: a component RPC runtime for Python.

Write plain classes marked ``@component``; host them in a worker with
``call.serve()``; call them through typed stubs from ``call.connect(resolver)``.
"""

from __future__ import annotations

from . import call, errors
from .component import component, not_retriable
from .runner import run

__all__ = ("call", "component", "errors", "not_retriable", "run")
__version__ = "0.1.0"
