"""Server process: ``python -m bench.server SYSTEM --address URL --loop LOOP [system flags]``.

Serves the system's echo until killed; the orchestrator finds it ready by
connecting to the address.
"""

from __future__ import annotations

import argparse
import signal

from bench.common import LOOPS, Address, run_on_loop
from bench.systems import MODULES, System, load

__all__ = ("main", "parse_process_args")


def parse_process_args(
    description: str, argv: list[str] | None, extra: tuple[str, ...] = ()
) -> tuple[System, argparse.Namespace]:
    """Parse ``SYSTEM --address --loop``, the ``extra`` flags and the system's own flags."""
    first = argparse.ArgumentParser(add_help=False)
    first.add_argument("system", choices=sorted(MODULES))
    known, _ = first.parse_known_args(argv)
    system = load(known.system)
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("system", choices=sorted(MODULES))
    parser.add_argument("--address", required=True, type=Address)
    parser.add_argument("--loop", choices=LOOPS, default="uvloop")
    for flag in extra:
        parser.add_argument(flag, required=True)
    system.add_arguments(parser)
    args = parser.parse_args(argv)
    if args.loop not in system.loops:
        parser.error(f"{system.name} does not run on {args.loop}")
    return system, args


def main(argv: list[str] | None = None) -> None:
    # SIGINT stops the server with the exit hooks run (the --otel-sdk report) however it was
    # started: a process started from a shell's background job inherits SIGINT ignored, and
    # Python then leaves it ignored.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    system, args = parse_process_args(__doc__ or "", argv)

    async def serve() -> None:
        await system.serve(args.address, args)

    run_on_loop(serve, args.loop)


if __name__ == "__main__":
    main()
