"""``python -m callrt.testing.worker --address A [--backend B] [--options JSON] module:Class ...``

Serves the named components until SIGTERM or SIGINT, then drains and exits 0.
Prints ``READY <endpoint>`` on stdout once serving, for the parent to read.

``--options`` holds :class:`~callrt.call.ServerOptions` fields, and, since an
``ssl.SSLContext`` or a policy is not JSON: ``tls_cert``, ``tls_key`` and
``tls_client_ca`` (PEM file paths, for :func:`callrt.tls.server_context`;
``tls_client_ca`` makes it mutual TLS), ``access`` as the rules of an
:class:`~callrt.access.AllowList`, and ``interceptors`` as ``"module:attr"`` names.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys

import anyio

from .. import call
from ..runner import run
from ._options import server_options

__all__ = ("main",)


def _load(name: str) -> object:
    module, _, attr = name.partition(":")
    return getattr(importlib.import_module(module), attr)()


async def _main(address: str, components: list[object], options: call.ServerOptions) -> None:
    # serve() drains on SIGTERM and SIGINT, with its handlers in place before it listens:
    # a SIGTERM sent right after READY drains the server.
    async with anyio.create_task_group() as tg:
        server = await tg.start(
            lambda task_status: call.serve(address, *components, options=options, task_status=task_status)
        )
        print("READY", server.endpoint, flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m callrt.testing.worker")
    parser.add_argument("--address", required=True)
    parser.add_argument("--backend", default="asyncio", choices=["asyncio", "trio"])
    parser.add_argument("--options", default="{}")
    parser.add_argument("components", nargs="+")
    args = parser.parse_args(argv)
    options = server_options(json.loads(args.options))
    components = [_load(c) for c in args.components]
    run(_main, args.address, components, options, backend=args.backend)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
