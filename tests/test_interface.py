"""Interfaces: ``@interface`` classes of ``async def`` methods, ``@component(implements=...)``, typed stubs.

A client that imports only the interface calls a worker serving the
implementation (same name, same method keys); a component that does not match
its interface is refused at decoration with what to fix.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any, Protocol

import anyio
import pytest

from callrt import call, component, interface, not_retriable
from callrt.component import component_spec
from callrt.errors import RegistrationError
from callrt.testing import WorkerProcess
from tests.interface_components import Shelf, ShelfAPI


@interface(name="tests.Till")
class TillAPI(Protocol):
    async def ring(self, sku: str, qty: int = 1, *, note: str = "") -> Decimal: ...

    @not_retriable
    async def close(self) -> Decimal: ...


class Till:
    """Implements TillAPI; subclasses below each get one thing wrong."""

    def ring(self, sku: str, qty: int = 1, *, note: str = "") -> Decimal:
        return Decimal(qty)

    async def close(self) -> Decimal:
        return Decimal(0)


def test_implementation_takes_the_interfaces_name_keys_and_retriability() -> None:
    impl, api = component_spec(component(implements=TillAPI)(Till)), component_spec(TillAPI)
    assert impl.name == api.name == "tests.Till"
    assert {m: s.key for m, s in impl.methods.items()} == {m: s.key for m, s in api.methods.items()}
    assert not impl.methods["close"].retriable  # @not_retriable on the interface is the method's
    assert not impl.methods["ring"].is_async and api.methods["ring"].is_async
    assert component_spec(Shelf).cls is Shelf and component_spec(ShelfAPI).cls is ShelfAPI


def test_a_subclass_of_an_interface_implements_it() -> None:
    @component
    class Sub(TillAPI):
        async def ring(self, sku: str, qty: int = 1, *, note: str = "") -> Decimal:
            return Decimal(1)

        async def close(self) -> Decimal:
            return Decimal(0)

    assert component_spec(Sub).name == "tests.Till"
    assert not component_spec(Sub).methods["close"].retriable


def refused(cls: type, **kwargs: Any) -> str:
    with pytest.raises(RegistrationError) as info:
        component(implements=TillAPI, **kwargs)(cls)
    return str(info.value)


def test_a_missing_method_is_named() -> None:
    class NoClose:
        def ring(self, sku: str, qty: int = 1, *, note: str = "") -> Decimal:
            return Decimal(0)

    assert refused(NoClose).endswith("NoClose (implements TillAPI, 'tests.Till'): does not implement close")

    class Inherits(TillAPI):  # subclassing without overriding is not implementing
        async def ring(self, sku: str, qty: int = 1, *, note: str = "") -> Decimal:
            return Decimal(0)

    assert refused(Inherits).endswith("does not implement close")


def test_a_public_method_outside_the_interface_is_named() -> None:
    class Extra(Till):
        def refund(self, sku: str) -> None: ...

        def _private(self) -> None: ...  # private methods are the implementation's own

    assert "public methods not in the interface: refund" in refused(Extra)


@pytest.mark.parametrize(
    ("ring", "message"),
    [
        (
            "def ring(self, sku: int, qty: int = 1, *, note: str = '') -> Decimal: ...",
            "parameter 'sku' is int here, str",
        ),
        ("def ring(self, sku: str, qty: int = 2, *, note: str = '') -> Decimal: ...", "'qty' defaults to 2 here, 1"),
        ("def ring(self, sku: str, qty: int, *, note: str = '') -> Decimal: ...", "'qty' defaults to nothing here"),
        ("def ring(self, sku: str, qty: int = 1, note: str = '') -> Decimal: ...", "'note' is positional or keyword"),
        (
            "def ring(self, sku: str, count: int = 1, *, note: str = '') -> Decimal: ...",
            "parameters (sku, count, note)",
        ),
        (
            "def ring(self, sku: str, qty: int = 1, *, note: str = '') -> float: ...",
            "returns float here, decimal.Decimal",
        ),
        ("def ring(self, sku, qty: int = 1, *, note: str = '') -> Decimal: ...", "parameter 'sku' is Any here, str"),
    ],
)
def test_a_signature_that_differs_is_explained(ring: str, message: str) -> None:
    namespace: dict[str, Any] = {"Decimal": Decimal, "Till": Till}
    exec(f"class Wrong(Till):\n    {ring}\n", namespace)
    text = refused(namespace["Wrong"])
    assert text.startswith("Wrong (implements TillAPI, 'tests.Till'): ring() does not match the interface: "), text
    assert message in text


def test_not_retriable_belongs_on_the_interface() -> None:
    class Marked(Till):
        @not_retriable
        def ring(self, sku: str, qty: int = 1, *, note: str = "") -> Decimal:
            return Decimal(0)

    assert "ring() is @not_retriable here but not in the interface" in refused(Marked)


def test_other_misuses() -> None:
    assert "takes its interface's name, not 'other'" in refused(Till, name="other")
    with pytest.raises(RegistrationError, match="is not a class marked @interface"):
        component(implements=Till)(type("Impl", (Till,), {}))
    with pytest.raises(RegistrationError, match=r"interface tests\.Sync: total must be async def"):

        @interface(name="tests.Sync")
        class Sync(Protocol):
            def total(self) -> int: ...

    @interface(name="tests.Plain")
    class Plain:  # a plain class works as an interface too; it is not a component to serve
        async def get(self) -> int:
            raise NotImplementedError

    with pytest.raises(
        RegistrationError, match="Plain is interface 'tests.Plain': serve a @component that implements it"
    ):
        component_spec(Plain())

    class Unmarked(Plain):
        async def get(self) -> int:
            return 1

    with pytest.raises(RegistrationError, match="Unmarked subclasses interface 'tests.Plain': mark it @component"):
        component_spec(Unmarked())


pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def shelf_worker() -> Any:
    with WorkerProcess("tcp://127.0.0.1:0", ["tests.interface_components:Shelf"]) as worker:
        yield worker


async def test_a_client_of_the_interface_calls_a_worker_serving_the_implementation(shelf_worker: WorkerProcess) -> None:
    with anyio.fail_after(20):
        async with call.connect(str(shelf_worker.endpoint)) as client:
            shelf = client.stub(ShelfAPI)
            assert await shelf.put("fig", 2) == 2
            assert await shelf.put(sku="fig") == 3
            assert await shelf.count("fig") == 3  # a plain def on the server
            assert await shelf.tenant() == ""
            tenant = call.with_options(shelf, call.CallOptions(metadata={"tenant": "t1"}))
            assert repr(tenant) == "<tests.Shelf stub>"
            assert await tenant.tenant() == "t1"
            assert await call.with_options(shelf.tenant, call.CallOptions(metadata={"tenant": "t2"}))() == "t2"
            assert await shelf.tenant() == ""  # with_options() leaves its argument alone
            legacy = client.stub(Shelf)  # a stub of the implementation class still works
            assert await legacy.take("fig") == 3
            assert await shelf.count("fig") == 0


async def test_with_options_takes_only_stubs() -> None:
    with pytest.raises(TypeError, match="with_options\\(\\) takes a stub or a method of one"):
        call.with_options(len, call.CallOptions())
