"""With the OpenTelemetry SDK configured, every call has a CLIENT and a SERVER span, per the RPC conventions.

The app runs in a process of its own (tests/span_app.py): a tracer provider can be set once per process.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_a_two_hop_call_makes_four_spans_in_one_trace() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "tests.span_app"], cwd=ROOT, capture_output=True, text=True, timeout=60, check=True
    )
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    spans = [line for line in lines if "metric" not in line]
    by_name = {(s["name"], s["kind"]): s for s in spans}
    client = by_name[("spans.Front/quadruple", "CLIENT")]
    front = by_name[("spans.Front/quadruple", "SERVER")]
    back_client = next(
        s for s in spans if s["name"] == "spans.Back/double" and s["kind"] == "CLIENT" and s["status"] == "UNSET"
    )
    back = next(
        s for s in spans if s["name"] == "spans.Back/double" and s["kind"] == "SERVER" and s["status"] == "UNSET"
    )

    # One trace, each span the child of the one before it.
    assert client["parent"] is None
    assert (
        front["parent"] == client["id"] and back_client["parent"] == front["id"] and back["parent"] == back_client["id"]
    )
    assert len({s["trace"] for s in (client, front, back_client, back)}) == 1

    for span in (client, front, back_client, back):
        assert span["attributes"]["rpc.system"] == "callrt"
    assert (front["attributes"]["rpc.service"], front["attributes"]["rpc.method"]) == ("spans.Front", "quadruple")
    assert front["attributes"]["network.transport"] == "inproc"
    assert client["attributes"]["server.address"] == "memory://front"

    # The failing call: both sides' spans carry the error.
    failed = [s for s in spans if s["status"] == "ERROR"]
    assert {s["kind"] for s in failed} == {"CLIENT", "SERVER"}
    server_failed = next(s for s in failed if s["kind"] == "SERVER")
    assert server_failed["attributes"]["error.type"] == "ValueError"
    client_failed = next(s for s in failed if s["kind"] == "CLIENT")
    assert client_failed["attributes"]["error.type"] == "callrt.errors.RemoteError"

    # Metrics, with the conventions' names and units.
    metrics = {line["metric"]: line for line in lines if "metric" in line}
    assert metrics["rpc.client.duration"]["unit"] == "ms" and metrics["rpc.server.request.size"]["unit"] == "By"
    server_calls = {
        (p["attributes"]["rpc.service"], p["attributes"]["rpc.method"], p["attributes"].get("error.type")): p["count"]
        for p in metrics["rpc.server.duration"]["points"]
    }
    assert server_calls == {
        ("spans.Front", "quadruple", None): 1,
        ("spans.Back", "double", None): 1,
        ("spans.Back", "double", "ValueError"): 1,
    }
    assert sum(p["count"] for p in metrics["rpc.server.response.size"]["points"]) == 2  # the two that replied
    client_calls = sum(p["count"] for p in metrics["rpc.client.duration"]["points"])
    assert client_calls == 3
    assert all(p["value"] == 0 for p in metrics["callrt.server.calls_in_flight"]["points"])  # all done
    assert sum(p["value"] for p in metrics["callrt.server.connections"]["points"]) == 0  # all closed
