"""With the OpenTelemetry SDK configured, stream calls, fan-out requests and affinity calls have CLIENT spans.

Three processes per backend: the app (tests/stream_span_app.py, where the SDK is set: a tracer provider
can be set once per process) and two worker processes that have it set too and give back their SERVER
spans. Each scenario of the app runs under a span of its own (INTERNAL, named after the scenario).
One stream goes through a fault-injection proxy that resets the stream's first connection on its
request, and one affinity call is claimed by no replica.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
STREAMS = "tests.TracedStreams"
BOOM = "tests.stream_span_components.Boom"
NO_CLAIM = "callrt.errors.NoClaim"

Span = dict[str, Any]


@pytest.fixture(scope="module", params=["asyncio", "trio"])
def run(request: pytest.FixtureRequest) -> list[dict[str, Any]]:
    result = subprocess.run(
        [sys.executable, "-m", "tests.stream_span_app", request.param],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines()]


def spans(run: list[dict[str, Any]], side: str) -> list[Span]:
    return [line for line in run if line.get("side") == side]


def under(run: list[dict[str, Any]], scenario: str) -> list[Span]:
    """The app's spans that are children of the scenario's own span."""
    client = spans(run, "client")
    parent = next(s for s in client if s["name"] == scenario and s["kind"] == "INTERNAL")
    return [s for s in client if s["parent"] == parent["id"]]


def served(run: list[dict[str, Any]], client_span: Span) -> Span:
    """The SERVER span whose parent is ``client_span``: exactly one."""
    children = [s for s in spans(run, "server") if s["parent"] == client_span["id"]]
    assert len(children) == 1, children
    child = children[0]
    assert child["trace"] == client_span["trace"]
    return child


def ports(run: list[dict[str, Any]]) -> list[int]:
    return [port for _, port in next(line["endpoints"] for line in run if "endpoints" in line)]


def proxy_port(run: list[dict[str, Any]]) -> int:
    port: int = next(line["proxy"] for line in run if "proxy" in line)
    return port


def metric(run: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    points: list[dict[str, Any]] = next(line["points"] for line in run if line.get("metric") == name)
    return points


def only(found: list[Span]) -> Span:
    assert len(found) == 1, found
    return found[0]


def check_attributes(span: Span, method: str, port: int) -> None:
    service, _, name = method.rpartition(".")
    attributes = span["attributes"]
    assert span["name"] == f"{service}/{name}"
    assert (attributes["rpc.system"], attributes["rpc.service"], attributes["rpc.method"]) == ("callrt", service, name)
    if span["kind"] == "CLIENT":
        assert (attributes["server.address"], attributes["server.port"]) == ("127.0.0.1", port)
    assert attributes["network.transport"] == "tcp"


@pytest.mark.parametrize(
    ("scenario", "method"), [("server stream", "count"), ("client stream", "total"), ("bidirectional", "tagged")]
)
def test_a_stream_call_has_a_client_span_and_the_servers_span_is_its_child(
    run: list[dict[str, Any]], scenario: str, method: str
) -> None:
    client = only(under(run, scenario))
    assert client["kind"] == "CLIENT" and client["status"] == "UNSET"
    check_attributes(client, f"{STREAMS}.{method}", ports(run)[0])
    server = served(run, client)
    assert server["kind"] == "SERVER" and server["status"] == "UNSET"
    check_attributes(server, f"{STREAMS}.{method}", ports(run)[0])
    assert "error.type" not in client["attributes"] and "error.type" not in server["attributes"]


@pytest.mark.parametrize(
    ("scenario", "method"), [("server stream fails", "fail_after"), ("client stream fails", "failing_total")]
)
def test_a_stream_whose_handler_raises_has_error_spans_on_both_sides(
    run: list[dict[str, Any]], scenario: str, method: str
) -> None:
    client = only(under(run, scenario))
    check_attributes(client, f"{STREAMS}.{method}", ports(run)[0])
    server = served(run, client)
    for span in (client, server):
        assert span["status"] == "ERROR" and span["attributes"]["error.type"] == BOOM


@pytest.mark.parametrize("scenario", ["break", "aclose", "cancelled"])
def test_a_stream_the_caller_leaves_ends_its_span_cancelled(run: list[dict[str, Any]], scenario: str) -> None:
    client = only(under(run, scenario))
    check_attributes(client, f"{STREAMS}.forever", ports(run)[0])
    assert client["status"] == "ERROR" and client["attributes"]["error.type"] == "cancelled"
    server = served(run, client)  # the handler was cancelled: its span says so too
    assert server["status"] == "ERROR" and server["attributes"]["error.type"] == "cancelled"


def test_a_fan_out_has_a_client_span_per_replica_with_its_address(run: list[dict[str, Any]]) -> None:
    requests = under(run, "fan-out")
    assert len(requests) == 2 and all(s["kind"] == "CLIENT" and s["status"] == "UNSET" for s in requests)
    assert sorted(s["attributes"]["server.port"] for s in requests) == sorted(ports(run))
    for span in requests:
        check_attributes(span, f"{STREAMS}.whoami", span["attributes"]["server.port"])
        served(run, span)


def test_an_affinity_call_has_a_span_per_claim_and_one_for_the_call_to_the_winner(run: list[dict[str, Any]]) -> None:
    children = under(run, "affinity")
    claims = [s for s in children if s["name"] == "callrt.Affinity/claim"]
    assert sorted(s["attributes"]["server.port"] for s in claims) == sorted(ports(run))
    winner = only([s for s in children if s["name"] == f"{STREAMS}/whoami"])
    assert winner["kind"] == "CLIENT" and winner["attributes"]["server.port"] in ports(run)
    for span in (*claims, winner):
        assert span["status"] == "UNSET"
        served(run, span)


def test_a_stream_whose_opening_is_retried_has_the_retry_as_an_event_of_its_span(run: list[dict[str, Any]]) -> None:
    """The proxy reset the first connection on the stream's request: one span, with the retry as an event."""
    client = only(under(run, "stream retried"))
    port = proxy_port(run)
    check_attributes(client, f"{STREAMS}.count", port)
    assert client["kind"] == "CLIENT" and client["status"] == "UNSET" and "error.type" not in client["attributes"]
    (retry,) = client["events"]
    assert retry["name"] == "retry" and retry["attributes"]["attempt"] == 2
    assert retry["attributes"]["error"].startswith(f"connection to tcp://127.0.0.1:{port} lost"), retry
    server = served(run, client)  # the first attempt never reached the server: only the retry did
    assert server["status"] == "UNSET"
    (retries,) = [p for p in metric(run, "callrt.client.retries") if p["attributes"]["rpc.method"] == "count"]
    assert retries["value"] == 1 and retries["attributes"]["server.port"] == port


def test_an_affinity_call_no_replica_claimed_has_an_error_span_and_no_call_to_a_replica(
    run: list[dict[str, Any]],
) -> None:
    """Each replica claimed 1.0, below the minimum: the claims succeeded, the call failed before it was sent."""
    children = under(run, "no claim")
    claims = [s for s in children if s["name"] == "callrt.Affinity/claim"]
    assert sorted(s["attributes"]["server.port"] for s in claims) == sorted(ports(run))
    for span in claims:  # a claim answered, if below the minimum, is a call that succeeded
        assert span["kind"] == "CLIENT" and span["status"] == "UNSET" and "error.type" not in span["attributes"]
        served(run, span)
    failed = only([s for s in children if s["name"] == f"{STREAMS}/whoami"])
    assert failed["kind"] == "CLIENT" and failed["status"] == "ERROR"
    assert failed["attributes"]["error.type"] == NO_CLAIM
    assert "server.address" not in failed["attributes"] and "server.port" not in failed["attributes"]
    assert len(children) == len(claims) + 1  # the claims and the call's own span, nothing else
    assert not [s for s in spans(run, "server") if s["parent"] == failed["id"]]  # no replica was called


def test_stream_calls_are_measured(run: list[dict[str, Any]]) -> None:
    points = metric(run, "rpc.client.duration")
    counts: dict[tuple[str, str | None], int] = {}
    for point in points:
        attributes = point["attributes"]
        if attributes["rpc.service"] == STREAMS:
            key = (attributes["rpc.method"], attributes.get("error.type"))
            counts[key] = counts.get(key, 0) + point["count"]
    assert counts == {
        ("count", None): 2,  # the stream retried is one call
        ("total", None): 1,
        ("tagged", None): 1,
        ("fail_after", BOOM): 1,
        ("failing_total", BOOM): 1,
        ("forever", "cancelled"): 3,
        ("whoami", None): 3,  # two fan-out requests and the affinity call
        ("whoami", NO_CLAIM): 1,
    }
