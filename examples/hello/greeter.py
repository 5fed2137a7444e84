"""The interface, all that a client imports, and the component that implements it."""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

from callrt import component, interface


@dataclass
class Greeting:
    text: str
    served_by_pid: int
    at: datetime


@interface(name="hello.Greeter")
class GreeterAPI(Protocol):
    """What clients call: ``client.stub(GreeterAPI)`` is typed as this, every method awaitable."""

    async def greet(self, name: str) -> Greeting: ...

    async def add(self, a: int, b: int = 1) -> int: ...


@component(implements=GreeterAPI)  # takes the name "hello.Greeter"; checked against the interface
class Greeter:
    def greet(self, name: str) -> Greeting:  # a plain def implements an async def of the interface
        return Greeting(f"Hello, {name}!", os.getpid(), datetime.now(UTC))

    async def add(self, a: int, b: int = 1) -> int:
        return a + b
