"""callrt's performance record: callrt against a minimal framed echo and grpc.aio.

Run ``python -m bench`` (or ``python bench/run.py``); see ``bench/README.md``.
Every measurement runs client and server in separate processes; the pieces are

* :mod:`bench.run` — the orchestrator: profiles, processes, repetitions;
* :mod:`bench.server` / :mod:`bench.client` — the two process entry points;
* :mod:`bench.measure` — the measurement loops every system shares;
* :mod:`bench.systems` — one small module per system under test;
* :mod:`bench.report` — medians, markdown tables, ratios and JSON.
"""
