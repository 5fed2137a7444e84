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
    spans = [line for line in lines if "name" in line]
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
    client_failed = next(s for s in failed if s["kind"] == "CLIENT" and "server.address" in s["attributes"])
    assert client_failed["attributes"]["error.type"] == "callrt.errors.RemoteError"
    # A call that reached no server: its CLIENT span, with the error and no server.
    unreached = next(s for s in failed if s["kind"] == "CLIENT" and "server.address" not in s["attributes"])
    assert unreached["attributes"]["error.type"] == "callrt.errors.Unreachable"

    # A call its caller cancelled: "cancelled" on both sides, as for a stream.
    waited = [s for s in spans if s["name"] == "spans.Back/wait"]
    assert sorted(s["kind"] for s in waited) == ["CLIENT", "SERVER"]
    assert all(s["status"] == "ERROR" and s["attributes"]["error.type"] == "cancelled" for s in waited), waited

    # Over TCP, retried: the server's address and port, the transport, and the retry as an event.
    port = next(line["tcp_port"] for line in lines if "tcp_port" in line)
    tcp_client = next(s for s in spans if s["kind"] == "CLIENT" and s["attributes"].get("server.port") == port)
    assert tcp_client["attributes"]["server.address"] == "127.0.0.1"
    assert tcp_client["attributes"]["network.transport"] == "tcp" and tcp_client["events"] == ["retry"]
    tcp_server = next(s for s in spans if s["kind"] == "SERVER" and s["parent"] == tcp_client["id"])
    assert tcp_server["attributes"]["network.transport"] == "tcp" and tcp_server["status"] == "UNSET"
    # Over a Unix socket: the socket's path is the server's address.
    unix_client = next(s for s in spans if s["kind"] == "CLIENT" and s["attributes"].get("network.transport") == "unix")
    assert unix_client["attributes"]["server.address"].endswith("/back.sock")
    assert "server.port" not in unix_client["attributes"]

    # Metrics, with the conventions' names and units.
    metrics = {line["metric"]: line for line in lines if "metric" in line}
    assert metrics["rpc.client.duration"]["unit"] == "ms" and metrics["rpc.server.request.size"]["unit"] == "By"
    server_calls = {
        (a["network.transport"], a["rpc.service"], a["rpc.method"], a.get("error.type")): p["count"]
        for p in metrics["rpc.server.duration"]["points"]
        for a in [p["attributes"]]
    }
    assert server_calls == {
        ("inproc", "spans.Front", "quadruple", None): 1,
        ("inproc", "spans.Back", "double", None): 1,
        ("inproc", "spans.Back", "double", "ValueError"): 1,
        ("inproc", "spans.Back", "wait", "cancelled"): 1,
        ("tcp", "spans.Back", "double", None): 1,
        ("unix", "spans.Back", "double", None): 1,
    }
    assert sum(p["count"] for p in metrics["rpc.server.response.size"]["points"]) == 4  # the four that replied
    client_calls = sum(p["count"] for p in metrics["rpc.client.duration"]["points"])
    assert client_calls == 7  # four in memory (one cancelled), one each over TCP and Unix, one that reached no server
    retries = metrics["callrt.client.retries"]["points"]
    assert [p["value"] for p in retries] == [1] and retries[0]["attributes"]["network.transport"] == "tcp"
    assert all(p["value"] == 0 for p in metrics["callrt.server.calls_in_flight"]["points"])  # all done
    assert sum(p["value"] for p in metrics["callrt.server.connections"]["points"]) == 0  # all closed


_IDLE_CLIENT = """
import anyio
from opentelemetry import metrics
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from callrt import call
from tests.span_app import Back

reader = InMemoryMetricReader()
metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))

async def main():
    async with call.start_server("memory://idle", Back()), call.connect("memory://idle"):
        data = reader.get_metrics_data()  # no call made yet in this process
        names = [m.name for rm in data.resource_metrics for sm in rm.scope_metrics for m in sm.metrics]
        print("callrt.client.replicas" in names)

anyio.run(main)
"""


def test_a_client_reports_its_replicas_before_its_first_call() -> None:
    result = subprocess.run(
        [sys.executable, "-c", _IDLE_CLIENT], cwd=ROOT, capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout.split() == ["True"], result.stderr
