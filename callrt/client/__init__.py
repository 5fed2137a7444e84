"""The client: ``connect(resolver)`` gives a :class:`Client` of the service the resolver finds.

This module is the facade; its parts are modules of their own:

- :mod:`.replicas` — one managed replica per endpoint, its state machine and its task;
- :mod:`.retries` — when a failed call is tried again, and the retry budget;
- :mod:`.stubs` — a component's methods as async functions calling a replica;
- :mod:`.fanout` — one call to every replica (:meth:`Client.multi`);
- :mod:`.affinity` — the replicas claim a call, one is chosen (:meth:`Client.by_affinity`).

The client follows the resolver (:meth:`Client.watch_resolver`), keeps the
replicas, and makes stubs whose calls pick a replica with the balancer.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import anyio
from anyio.abc import TaskGroup

from .._deadline import deadline_function
from ..balancers import RoundRobin
from ..component import MethodSpec
from ..context import CallOptions
from ..endpoints import Endpoint
from ..errors import Unreachable
from ..options import ClientOptions
from ..resolvers import ConstantResolver, Resolver, Version
from ..transport import TransportSelector
from .affinity import Selection, make_affinity_stub
from .fanout import Multi, Replies, check_multi_arguments
from .replicas import TRANSITIONS, ManagedReplica, ReplicaSet, ReplicaState
from .retries import Retrier
from .stubs import CallPath, make_stub

__all__ = ("TRANSITIONS", "Client", "ManagedReplica", "ReplicaState", "connect")

T = TypeVar("T")


class Client:
    """A client of one service: replicas from a resolver, a balancer, typed stubs.

    Made by :func:`connect`. Safe to share among the tasks of one event loop.
    """

    def __init__(self, resolver: Resolver, options: ClientOptions, tg: TaskGroup) -> None:
        self.resolver = resolver
        self.options = options
        self.balancer = options.balancer if options.balancer is not None else RoundRobin()
        self.resolver_error: BaseException | None = None  # the last resolve() failure, until one succeeds
        self.replica_set = ReplicaSet(options, self.balancer, TransportSelector(options.transport), tg)
        self.replica_set.describe_source = lambda: repr(resolver)
        self.replica_set.source_error = lambda: self.resolver_error
        self.retrier = Retrier(options.retry)
        self._task_group = tg  # fan-outs' per-replica requests run here
        self._calls = CallPath(
            self.replica_set,
            self.retrier,
            deadline_function(),
            options.optimistic_spin_duration,
            tuple(options.interceptors),
            tg.start_soon,
        )

    @property
    def replicas(self) -> dict[Endpoint, ManagedReplica]:
        """The replicas this client knows, by endpoint."""
        return self.replica_set.replicas

    @property
    def retry_counts(self) -> dict[str, int]:
        """Attempts made (first tries and retries) and retries, since the client opened."""
        retries = self.retrier.retries
        return {"attempts": self.retrier.budget.calls + retries, "retries": retries}

    def stub(self, cls: Callable[..., T], *, options: CallOptions | None = None, name: str | None = None) -> T:
        """A stub of ``cls``: the same methods, each awaitable, calling a remote replica.

        ``cls`` is best an ``@interface`` (all ``async def``): the stub is then
        typed exactly as the interface. A ``@component`` class works too, typed
        as the class (its plain ``def`` methods then look unawaitable to a checker).
        ``options`` go with every call of the stub; :func:`callrt.call.with_options`
        gives a stub or one method with other options.
        """
        self.replica_set.want_health(cls, name)  # its replicas are asked about its health too
        return make_stub(self._calls, cls, options, name)

    def multi(
        self,
        cls: Callable[..., object],
        *,
        expected: int | None = None,
        timeout: float | None = None,
        options: CallOptions | None = None,
    ) -> Multi:
        """A fan-out stub of ``cls``: ``async for reply in client.multi(API).method(*args)``.

        Each call goes to every replica this client knows; the :class:`~callrt.client.fanout.Replies`
        yield one :class:`~callrt.client.fanout.Reply` (endpoint, value or error) per replica as
        it answers. It ends when all have answered, at the deadline (the caller's, or ``timeout``
        seconds), or after ``expected`` successful replies; leaving the loop early cancels the
        requests still outstanding. See :mod:`callrt.client.fanout` for replicas that are not connected.
        """
        check_multi_arguments(expected, timeout)
        replicas, tg, pick_timeout = self.replica_set, self._task_group, self.options.pick_timeout
        effective_deadline = self._calls.effective_deadline

        interceptors = self.options.interceptors

        def replies(method: MethodSpec, payload: bytes, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Replies[Any]:
            return Replies(
                replicas,
                tg,
                effective_deadline,
                method,
                payload,
                expected=expected,
                timeout=timeout,
                options=options,
                pick_timeout=pick_timeout,
                interceptors=interceptors,
                call_args=(args, kwargs),
            )

        return Multi(cls, replies)

    def by_affinity(
        self, cls: Callable[..., T], selection: Selection | None = None, *, options: CallOptions | None = None
    ) -> T:
        """A stub of ``cls`` whose calls go to the replica that claims them best (psrpc's affinity).

        Each call asks every replica for its claim (``@callrt.affinity`` on the component's
        method; 1.0 without one), picks by ``selection`` (:class:`~callrt.client.affinity.Selection`;
        by default the highest claim within 1 s) and sends the call to that replica only.
        Raises :class:`~callrt.errors.NoClaim` when no replica qualifies. Typed as ``cls``, like :meth:`stub`.
        """
        chosen = selection if selection is not None else Selection()
        return make_affinity_stub(
            self.replica_set, self._calls.effective_deadline, cls, chosen, options, self.options.interceptors
        )

    def update_endpoints(self, endpoints: Sequence[Endpoint]) -> None:
        self.replica_set.update(endpoints)

    async def watch_resolver(self, version: Version | None) -> None:
        """Follow the resolver; errors and quick "nothing new" answers back off, capped."""
        backoff = 0.01
        while True:
            asked = anyio.current_time()
            try:
                endpoints, new_version = await self.resolver.resolve(version)
            except Exception as exc:
                self.resolver_error = exc
                await anyio.sleep(backoff * (1 - 0.4 * random.random()))
                backoff = min(backoff * 2, 5.0)
                continue
            if new_version is None or new_version == version:
                if anyio.current_time() - asked < 1.0:
                    # It did not block: ask again later, not in a busy loop.
                    await anyio.sleep(backoff)
                    backoff = min(backoff * 2, 5.0)
                else:
                    backoff = 0.01  # it blocked and timed out: its watch is live, ask again now
                continue
            backoff = 0.01
            version = new_version
            self.resolver_error = None
            self.update_endpoints(endpoints)

    async def aclose(self) -> None:
        self.replica_set.close()


@asynccontextmanager
async def connect(
    resolver: Resolver | str | Endpoint | Sequence[str | Endpoint], *, options: ClientOptions | None = None
) -> AsyncIterator[Client]:
    """``async with connect(resolver) as client:`` — a client of the service ``resolver`` finds.

    ``resolver`` may also be an endpoint (a URL or an :class:`~callrt.endpoints.Endpoint`) or a
    list of them: a constant resolver.
    A constant resolver with no endpoints raises :class:`~callrt.errors.Unreachable`;
    otherwise calls wait (up to their deadline, or ``pick_timeout`` without one) for a
    replica. A non-constant resolver that fails is asked again with capped backoff,
    at start-up too: its errors never end the client.
    """
    if isinstance(resolver, (str, Endpoint)):
        resolver = ConstantResolver([resolver])
    elif not isinstance(resolver, Resolver):
        resolver = ConstantResolver(resolver)
    options = options or ClientOptions()
    first_error: Exception | None = None
    try:
        endpoints, version = await resolver.resolve(None)
    except Exception as exc:
        if resolver.is_constant():
            raise
        # A resolver that may change can also recover: the watch keeps asking, with backoff.
        endpoints, version, first_error = (), None, exc
    if resolver.is_constant() and not endpoints:
        raise Unreachable(f"no endpoints: {resolver!r} is empty")
    raised: BaseException | None = None
    async with anyio.create_task_group() as tg:
        client = Client(resolver, options, tg)
        client.resolver_error = first_error
        client.update_endpoints(endpoints)
        tg.start_soon(client.retrier.tick_budget)
        if not resolver.is_constant():
            tg.start_soon(client.watch_resolver, version)
        try:
            yield client
        except BaseException as exc:
            # Raised by the caller's block: re-raised below, outside our task group,
            # so that it reaches the caller as itself, not inside an exception group.
            raised = exc
        finally:
            await client.aclose()
            tg.cancel_scope.cancel()
    if raised is not None:
        raise raised
