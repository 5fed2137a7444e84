"""The libFuzzer process for one target: ``python -m fuzz._atheris TARGET [libFuzzer flags] [corpus dirs]``.

Started by ``python -m fuzz`` (see ``__main__``), which writes the seeds and
the results; run by hand it is atheris as usual. callrt's codec modules are
imported under atheris's instrumentation, so libFuzzer's coverage (``cov``,
``ft``) is the coverage of ``callrt.protocol`` and ``callrt.tracing``.
"""

from __future__ import annotations

import sys

import atheris  # type: ignore[import-untyped]

# The codec's modules; for server-connection also the connection logic and what it calls per frame.
_INSTRUMENTED = ["callrt.protocol", "callrt.tracing", "callrt.errors"]
if sys.argv[1:2] == ["server-connection"]:
    _INSTRUMENTED += ["callrt.connection", "callrt.component", "callrt.handlers", "callrt.access", "callrt.compression"]

with atheris.instrument_imports(include=_INSTRUMENTED):
    from fuzz.targets import TARGETS


def main() -> None:
    target = TARGETS[sys.argv[1]]
    atheris.Setup([sys.argv[0], *sys.argv[2:]], target)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
