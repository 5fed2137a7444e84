"""A resolver for replicas on one machine: every Unix socket in a directory is one.

Servers bind ``<dir>/<name>.sock`` and clients find them without any
registry. Changes are watched with ``watchfiles`` (inotify and its peers;
``pip install 'callrt[watch]'``), which works on asyncio and trio.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import AsyncGenerator, Callable, Sequence
from contextlib import aclosing
from fnmatch import fnmatch
from typing import Any

import anyio

from ..endpoints import Endpoint, unix
from ._base import Resolver, Version

__all__ = ("UnixDirectoryResolver",)


def _load_awatch() -> Callable[..., AsyncGenerator[set[tuple[Any, str]], None]]:
    try:
        from watchfiles import awatch
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("UnixDirectoryResolver needs the watchfiles package: pip install 'callrt[watch]'") from e
    return awatch


def _version_of(endpoints: Sequence[Endpoint]) -> Version:
    return hashlib.sha256("\0".join(sorted(map(str, endpoints))).encode()).hexdigest()[:16]


class UnixDirectoryResolver(Resolver):
    """The Unix sockets in ``path`` whose names match ``pattern``, as ``unix`` endpoints.

    The version is a digest of the sorted set, so it is the same in every
    process that sees the same sockets. A missing directory is an empty set
    until it appears. ``resolve(version)`` waits for a change for at most
    ``max_wait`` seconds, then returns ``version`` to mean "ask again"; while
    it waits it holds one of anyio's worker threads.
    """

    def __init__(self, path: str | os.PathLike[str], pattern: str = "*.sock", *, max_wait: float = 30.0) -> None:
        self._awatch = _load_awatch()
        self._path = os.path.abspath(os.fspath(path))
        self._pattern = pattern
        self._max_wait = max_wait

    def is_constant(self) -> bool:
        return False

    async def resolve(self, version: Version | None) -> tuple[Sequence[Endpoint], Version | None]:
        if version is None:
            endpoints = self._list()
            return endpoints, _version_of(endpoints)
        result: tuple[Sequence[Endpoint], Version] | None = None
        error: Exception | None = None
        done = anyio.Event()
        # awatch waits in a worker thread that notices cancellation only at its
        # own timeout (5 s), but notices its stop event within 50 ms; so the
        # watch runs in a task and this one sets the event however it ends.
        stop = anyio.Event()

        async def watch() -> None:
            nonlocal result, error
            try:
                result = await self._watch_until_changed(version, stop)
            except Exception as e:  # re-raised below as itself, not in an ExceptionGroup
                error = e
            done.set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(watch)
            try:
                with anyio.move_on_after(self._max_wait):
                    await done.wait()
            finally:
                stop.set()
        if error is not None:
            raise error
        if result is not None:
            return result
        endpoints = self._list()
        return endpoints, _version_of(endpoints)  # normally `version`: "ask again"

    async def _watch_until_changed(
        self, version: Version, stop: anyio.Event
    ) -> tuple[Sequence[Endpoint], Version] | None:
        while not stop.is_set():
            # The directory itself, or while it is missing its nearest existing
            # ancestor, to see it appear.
            root = self._watch_root()
            # No checkpoint between listing and awatch's first step, which adds
            # the OS watch before it awaits: no change made by another task can
            # fall between the two unseen.
            endpoints = self._list()
            if (v := _version_of(endpoints)) != version:
                return endpoints, v
            try:
                changes = self._awatch(root, watch_filter=self._relevant, recursive=False, stop_event=stop, step=50)
                async with aclosing(changes):
                    async for _ in changes:
                        endpoints = self._list()
                        if (v := _version_of(endpoints)) != version:
                            return endpoints, v
                        if self._watch_root() != root:
                            break
            except FileNotFoundError:
                pass  # root vanished before the watch started: pick a new one
        return None

    def _list(self) -> list[Endpoint]:
        # Synchronous on purpose (see _watch_until_changed); a directory of
        # sockets is small and local.
        try:
            entries = list(os.scandir(self._path))
        except (FileNotFoundError, NotADirectoryError):
            return []
        found = []
        for entry in entries:
            if not fnmatch(entry.name, self._pattern):
                continue
            try:
                if stat.S_ISSOCK(entry.stat().st_mode):
                    found.append(unix(entry.path))
            except FileNotFoundError:
                pass  # removed since scandir, or a dangling symlink
        found.sort(key=str)
        return found

    def _watch_root(self) -> str:
        root = self._path
        while not os.path.isdir(root):
            parent = os.path.dirname(root)
            if parent == root:
                break
            root = parent
        return root

    def _relevant(self, change: object, path: str) -> bool:
        # A matching entry of the directory, the directory itself, or one of its
        # ancestors (they matter while the directory is missing).
        target = self._path
        if os.path.dirname(path) == target:
            return fnmatch(os.path.basename(path), self._pattern)
        return path == target or target.startswith(path.rstrip(os.sep) + os.sep)

    def __repr__(self) -> str:
        return f"UnixDirectoryResolver({self._path!r}, {self._pattern!r})"
