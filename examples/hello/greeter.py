"""The component, shared by the worker and its clients."""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import UTC, datetime

from callrt import component


@dataclass
class Greeting:
    text: str
    served_by_pid: int
    at: datetime


@component(name="hello.Greeter")
class Greeter:
    def greet(self, name: str) -> Greeting:
        return Greeting(f"Hello, {name}!", os.getpid(), datetime.now(UTC))

    async def add(self, a: int, b: int = 1) -> int:
        return a + b
