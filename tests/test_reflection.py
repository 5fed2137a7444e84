"""Reflection: a server answers ``callrt.Reflection.describe()`` with its components, methods and JSON Schemas."""

from __future__ import annotations

import enum
from typing import Any

import anyio
import msgspec
import pytest

from callrt import call, component, errors, not_retriable
from callrt.handlers import HandlerMap
from callrt.reflection import REFLECTION, ReflectionAPI, ServiceInfo

pytestmark = pytest.mark.anyio


class Size(enum.Enum):
    SMALL = "small"
    LARGE = "large"


class Line(msgspec.Struct):
    sku: str
    qty: int = 1


class Order(msgspec.Struct):
    lines: list[Line]
    size: Size
    note: str | None = None


@component(name="test.Shop")
class Shop:
    def place(self, order: Order, rush: bool = False, *, coupon: str | None = None) -> int:
        return len(order.lines) + rush

    @not_retriable
    async def pay(self, order_id: int, size: Size | None) -> Size | None:
        return size

    def nothing(self) -> None:
        return None


async def _describe(*components: object, options: call.ServerOptions | None = None) -> ServiceInfo:
    async with call.start_server("memory://reflection", *components, options=options):
        async with call.connect("memory://reflection") as client:
            return await client.stub(ReflectionAPI).describe()


def _resolve(schema: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    ref = schema.get("$ref")
    if ref is None:
        return schema
    name = ref.removeprefix("#/$defs/")
    return defs[name]  # type: ignore[no-any-return]


async def test_components_methods_and_schemas() -> None:
    with anyio.fail_after(10):
        info = await _describe(Shop())
    # Not callrt.Reflection itself; the built-in health component is served, so it is listed.
    assert [c.name for c in info.components] == ["callrt.Affinity", "callrt.Health", "test.Shop"]
    health = info.component("callrt.Health")
    assert health is not None
    check, watch = health.methods
    assert check.params is not None
    assert check.params[0].schema == {"type": "string"}
    assert check.result == {"enum": ["NOT_SERVING", "SERVICE_UNKNOWN", "SERVING"]}
    assert (watch.name, watch.stream, watch.result) == ("watch", "server", check.result)  # a stream of statuses
    shop = info.component("test.Shop")
    assert shop is not None
    methods = {m.name: m for m in shop.methods}
    assert sorted(methods) == ["nothing", "pay", "place"]

    place = methods["place"]
    assert place.retriable
    assert place.params is not None
    assert [(p.name, p.required, p.keyword_only) for p in place.params] == [
        ("order", True, False),
        ("rush", False, False),
        ("coupon", False, True),
    ]
    assert place.params[1].default is False
    assert place.params[2].default is None
    order = _resolve(place.params[0].schema, info.defs)
    assert order["type"] == "object"
    assert order["required"] == ["lines", "size"]
    assert _resolve(order["properties"]["size"], info.defs)["enum"] == ["large", "small"]
    assert order["properties"]["note"] == {"anyOf": [{"type": "string"}, {"type": "null"}], "default": None}
    line = _resolve(order["properties"]["lines"]["items"], info.defs)
    assert line["properties"]["qty"] == {"type": "integer", "default": 1}
    assert place.params[1].schema == {"type": "boolean"}
    assert place.result == {"type": "integer"}
    assert place.signature.startswith("place(order: ")

    pay = methods["pay"]
    assert not pay.retriable
    assert pay.params is not None
    assert pay.params[1].schema == {"anyOf": [{"$ref": "#/$defs/Size"}, {"type": "null"}]}
    assert pay.result == pay.params[1].schema
    assert methods["nothing"].params == []
    assert methods["nothing"].result == {"type": "null"}

    # The whole description is JSON, and the schemas are what msgspec makes for the types.
    decoded = msgspec.json.decode(msgspec.json.encode(info), type=ServiceInfo)
    assert decoded == info
    (expected,), defs = msgspec.json.schema_components([Order], ref_template="#/$defs/{name}")
    assert info.defs["Order"] == defs["Order"]
    assert place.params[0].schema == expected


async def test_raw_handlers_are_listed_without_types() -> None:
    handlers = HandlerMap()
    handlers.set("test.Raw", "ping", lambda payload: payload)
    with anyio.fail_after(10):
        info = await _describe(handlers, Shop())
    raw = info.component("test.Raw")
    assert raw is not None
    assert [(m.name, m.params) for m in raw.methods] == [("ping", None)]
    assert info.component("test.Shop") is not None


async def test_turned_off_by_option() -> None:
    with anyio.fail_after(10):
        async with call.start_server("memory://no-reflection", Shop(), options=call.ServerOptions(reflection=False)):
            async with call.connect("memory://no-reflection") as client:
                with pytest.raises(errors.UnknownMethod, match=REFLECTION):
                    await client.stub(ReflectionAPI).describe()
