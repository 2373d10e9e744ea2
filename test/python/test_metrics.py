"""arrowport_metrics() and GET /metrics: known traffic in, exact counts out, and both views agree."""

import httpx
import pyarrow as pa
import pyarrow.flight as fl
import pytest
from prometheus_client.parser import text_string_to_metric_families

import flightraw
from clients import flight_put, ipc_bytes
from testdata import events

ARROW = "application/vnd.apache.arrow.stream"


def scrape(addr):
    r = httpx.get(f"http://{addr}/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(r.text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def sample(samples, name, **labels):
    return samples.get((name, tuple(sorted(labels.items()))), 0)


def test_sql_and_prometheus_agree_on_known_traffic(py_listening):
    addr = py_listening.addr
    # Flight: two commits (one zstd-compressed), one conflict (rolled back), one rollback mid-stream.
    assert flight_put(addr, "events", events(100))["rows"] == 100
    assert flight_put(addr, "events", events(50), compression="zstd")["rows"] == 50
    bad = pa.table({"id": ["x"] * 5, "timestamp": [1] * 5, "value": [1.0] * 5, "category": ["a"] * 5, "metric": [1.0] * 5})
    with pytest.raises(pa.ArrowException):
        flight_put(addr, "events", bad)
    schema_msg, batch_msg = flightraw.ipc_messages(events(100))[:2]
    import grpc
    with pytest.raises(grpc.RpcError):
        flightraw.do_put(addr, [
            flightraw.flight_data(flightraw.descriptor(1, path=["events"]), header=schema_msg[0]),
            flightraw.flight_data(header=batch_msg[0], body=batch_msg[1]),
            flightraw.flight_data(header=batch_msg[0], body=batch_msg[1][:10]),
        ])
    # A descriptor that names no stream: counted under _unknown, no series of its own.
    with pytest.raises(grpc.RpcError):
        flightraw.do_put(addr, [flightraw.flight_data(flightraw.descriptor(2, cmd=b"nope"), header=schema_msg[0])])
    # REST: one commit, one 415 refusal, one failure of a stream that never committed.
    assert httpx.post(f"http://{addr}/streams/events", content=ipc_bytes(events(30)), headers={"Content-Type": ARROW}).status_code == 200
    assert httpx.post(f"http://{addr}/streams/events", content=b"x", headers={"Content-Type": "text/csv"}).status_code == 415
    assert httpx.post(f"http://{addr}/streams/typo", content=b"\x01\x00\x00\x00garbage", headers={"Content-Type": ARROW}).status_code == 400

    assert py_listening.count("events") == 180
    rows = py_listening.sql(
        "SELECT stream, protocol, requests_ok, requests_failed, rows_committed, batches, rows_rolled_back, "
        "wire_bytes > 0, decoded_bytes > 0, last_commit IS NOT NULL, last_error IS NOT NULL, latency_p99_ms > 0 "
        "FROM arrowport_metrics() ORDER BY stream, protocol")
    assert rows == [
        ("_unknown", "flight", 0, 1, 0, 0, 0, False, False, False, True, True),
        ("_unknown", "rest", 0, 2, 0, 0, 0, True, False, False, True, True),
        ("events", "flight", 2, 2, 150, 2, 105, True, True, True, True, True),
        ("events", "rest", 1, 0, 30, 1, 0, True, True, True, False, True),
    ]
    last_error = py_listening.sql("SELECT last_error FROM arrowport_metrics() WHERE stream = 'events' AND protocol = 'flight'")[0][0]
    assert "invalid Arrow IPC data" in last_error

    samples = scrape(addr)
    for stream, protocol, ok, failed, committed, batches, rolled_back, *_ in rows:
        labels = {"stream": stream, "protocol": protocol}
        assert sample(samples, "arrowport_requests_total", outcome="ok", **labels) == ok
        assert sample(samples, "arrowport_requests_total", outcome="failed", **labels) == failed
        assert sample(samples, "arrowport_rows_total", **labels) == committed
        assert sample(samples, "arrowport_batches_total", **labels) == batches
        assert sample(samples, "arrowport_rows_rolled_back_total", **labels) == rolled_back
        assert sample(samples, "arrowport_request_duration_seconds_count", **labels) == ok + failed
    wire_sql = py_listening.sql("SELECT wire_bytes, decoded_bytes FROM arrowport_metrics() WHERE stream = 'events' AND protocol = 'flight'")[0]
    assert sample(samples, "arrowport_wire_bytes_total", stream="events", protocol="flight") == wire_sql[0]
    assert sample(samples, "arrowport_decoded_bytes_total", stream="events", protocol="flight") == wire_sql[1]
    # The compressed request shows: less on the wire than decoded.
    assert not any(dict(k[1]).get("stream") == "typo" for k in samples)
    assert sample(samples, "arrowport_requests_in_flight", protocol="flight") == 0
    assert sample(samples, "arrowport_listener_uptime_seconds") >= 0
    # A total is one SUM away.
    assert py_listening.sql("SELECT sum(rows_committed)::BIGINT FROM arrowport_metrics()") == [(180,)]


def test_every_expression_of_the_grafana_dashboard_names_what_the_host_exports(py_listening):
    """docs/grafana/arrowport.json: each PromQL expression parses, and every metric and label it names is one the
    running host exports (after traffic that makes every series appear: commits, a rollback, a replay)."""
    import json
    import os
    import re

    import promql_parser

    addr = py_listening.addr
    assert flight_put(addr, "events", events(10))["rows"] == 10
    bad = pa.table({"id": ["x"] * 5, "timestamp": [1] * 5, "value": [1.0] * 5, "category": ["a"] * 5, "metric": [1.0] * 5})
    with pytest.raises(pa.ArrowException):
        flight_put(addr, "events", bad)
    for _ in range(2):  # the second is a replay
        r = httpx.post(f"http://{addr}/streams/events", content=ipc_bytes(events(3)),
                       headers={"Content-Type": ARROW, "Idempotency-Key": "dash-1"})
        assert r.status_code == 200
    assert r.json()["replayed"] is True
    exported = {}  # series name -> label names seen
    for family in text_string_to_metric_families(httpx.get(f"http://{addr}/metrics").text):
        for s in family.samples:
            exported.setdefault(s.name, set()).update(s.labels)
    path = os.path.join(os.path.dirname(__file__), "..", "..", "docs", "grafana", "arrowport.json")
    with open(path) as f:
        dashboard = json.load(f)
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    exprs += [v["definition"] for v in dashboard["templating"]["list"] if "definition" in v]
    assert len(exprs) >= 12
    checked = set()
    for expr in exprs:
        promql = expr.replace("$__rate_interval", "1m").replace("$stream", ".*")
        if not promql.startswith("label_values("):
            promql_parser.parse(promql)  # raises on a syntax error
        names = set(re.findall(r"\barrowport_[a-z_]+\b", promql))
        assert names, expr
        for name in names:
            assert name in exported, f"{name} (in {expr}) is not exported; exported: {sorted(exported)}"
            checked.add(name)
            labels = set(re.findall(r"\b([a-z_]+)\s*=~?\s*\"", promql))
            for group in re.findall(r"\bby \(([^)]*)\)", promql):
                labels.update(x.strip() for x in group.split(","))
            labels.discard("le")
            assert labels <= exported[name], f"{expr}: labels {labels - exported[name]} are not on {name}"
    # rows/s, requests/s, failures, latency, in-flight and bytes are all there.
    for name in ["arrowport_rows_total", "arrowport_requests_total", "arrowport_request_duration_seconds_bucket",
                 "arrowport_requests_in_flight", "arrowport_wire_bytes_total", "arrowport_replays_total"]:
        assert name in checked, name
