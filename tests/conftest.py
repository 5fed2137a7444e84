"""Every async test runs on asyncio (uvloop when installed) and on trio, unless it says otherwise.

``scratch`` (one per module) and ``sockdir`` (one per test) are short directories for Unix sockets.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import ALL_BACKENDS, short_tempdir


@pytest.fixture(params=ALL_BACKENDS)
def anyio_backend(request: pytest.FixtureRequest) -> tuple[str, dict[str, object]]:
    return request.param  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def scratch() -> Iterator[Path]:
    yield from short_tempdir()


@pytest.fixture
def sockdir() -> Iterator[Path]:
    yield from short_tempdir()
