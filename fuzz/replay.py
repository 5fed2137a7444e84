"""``python -m fuzz coverage [TARGET ...]``: replay the corpora under coverage.py.

libFuzzer's ``cov`` counts edges; this says which lines and branches of
``callrt/protocol.py`` and ``callrt/tracing.py`` the corpus (seeds plus every
input the fuzzer kept, ``fuzz/corpus/TARGET``) reaches, and which it does not.
Needs the ``coverage`` package (not a dependency of callrt).
"""

from __future__ import annotations

import argparse
import io
import os
from pathlib import Path

HERE = Path(os.path.abspath(__file__)).parent


def main(argv: list[str] | None = None) -> int:
    import coverage

    parser = argparse.ArgumentParser(prog="python -m fuzz coverage", description=__doc__.splitlines()[0])
    parser.add_argument(
        "targets", nargs="*", default=["decoder-server", "decoder-client", "tracestate", "server-connection"]
    )
    args = parser.parse_args(argv)
    cov = coverage.Coverage(
        branch=True,
        data_file=None,
        include=["*/callrt/protocol.py", "*/callrt/tracing.py", "*/callrt/connection/server.py"],
    )
    cov.start()
    from fuzz.targets import TARGETS

    counts = {}
    for target in args.targets:
        files = sorted((HERE / "corpus" / target).glob("*"))
        for path in files:
            TARGETS[target](path.read_bytes())
        counts[target] = len(files)
    cov.stop()
    out = io.StringIO()
    total = cov.report(file=out, show_missing=True)
    print(out.getvalue().rstrip())
    print(f"inputs replayed: {counts}; total line+branch coverage {total:.1f}%")
    return 0


if __name__ == "__main__":
    main()
