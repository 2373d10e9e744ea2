"""REST end to end: real HTTP clients (httpx, a raw socket, curl) against DuckDB hosts with arrowport loaded;
every outcome is checked in DuckDB afterwards."""
import base64
import gzip
import json
import os
import socket
import subprocess
import threading
import time

import httpx
import pyarrow as pa
import pytest

import hosts
from clients import ipc_bytes, wait_for
from testdata import events

ARROW = "application/vnd.apache.arrow.stream"



def url(listening, path):
    return f"http://{listening.addr}{path}"


def post_ipc(listening, name, body, **headers):
    h = {"Content-Type": ARROW}
    h.update(headers)
    return httpx.post(url(listening, f"/streams/{name}"), content=body, headers=h, timeout=60)


def error_of(response, status, code):
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"]["code"] == code, body
    return body["error"]["message"]


def test_raw_ipc_body_lands_in_one_transaction(listening):
    body = ipc_bytes(events(5000), chunk=1000)
    r = post_ipc(listening, "events", body)
    assert r.status_code == 200, r.text
    assert r.json() == {"stream": "events", "table": "main.events", "rows": 5000, "batches": 5, "bytes": len(body)}
    assert listening.sql("SELECT count(*), sum(id)::BIGINT, count(DISTINCT category) FROM events") == [(5000, sum(range(5000)), 4)]


def test_http_and_ipc_compression(py_listening):
    t = events(3000)
    raw = ipc_bytes(t)
    cases = [
        ({"Content-Encoding": "zstd"}, pa.compress(raw, codec="zstd", asbytes=True)),
        ({"Content-Encoding": "gzip"}, gzip.compress(raw)),
        ({}, ipc_bytes(t, compression="zstd")),
        ({}, ipc_bytes(t, compression="lz4")),
        ({"Content-Encoding": "zstd"}, pa.compress(ipc_bytes(t, compression="lz4"), codec="zstd", asbytes=True)),
    ]
    for headers, body in cases:
        r = post_ipc(py_listening, "packed", body, **headers)
        assert r.status_code == 200, (headers, r.text)
        assert r.json()["rows"] == 3000 and r.json()["bytes"] == len(body)
    assert py_listening.count("packed") == 15_000


def test_chunked_transfer_body(py_listening):
    body = ipc_bytes(events(20_000), chunk=2000)

    def pieces():
        for i in range(0, len(body), 7777):
            yield body[i:i + 7777]

    r = httpx.post(url(py_listening, "/streams/chunked"), content=pieces(), headers={"Content-Type": ARROW}, timeout=60)
    assert r.status_code == 200, r.text
    assert r.json()["rows"] == 20_000 and r.json()["batches"] == 10
    assert py_listening.count("chunked") == 20_000


def test_a_million_rows_in_one_streamed_body(py_listening):
    n = 1_000_000
    t = pa.table({"id": pa.array(range(n), pa.int64()), "v": pa.array([float(i) for i in range(n)])})
    body = ipc_bytes(t, chunk=100_000)

    def pieces():
        for i in range(0, len(body), 1 << 20):
            yield body[i:i + (1 << 20)]

    r = httpx.post(url(py_listening, "/streams/big"), content=pieces(), headers={"Content-Type": ARROW}, timeout=120)
    assert r.status_code == 200, r.text
    assert r.json()["rows"] == n
    assert py_listening.sql("SELECT count(*), max(id) FROM big") == [(n, n - 1)]


def test_original_json_endpoint_with_the_original_client_format(listening):
    data = pa.table({"a": [1, 2, 3], "b": ["foo", "bar", "baz"]})
    sink = pa.BufferOutputStream()
    writer = pa.ipc.new_stream(sink, data.schema)
    writer.write_table(data)
    writer.close()
    payload = {
        "config": {"target_table": "my_table", "chunk_size": 10000, "compression": {"algorithm": "zstd", "level": 3}},
        "batch": {
            "arrow_schema": base64.b64encode(data.schema.serialize()).decode(),
            "data": base64.b64encode(sink.getvalue().to_pybytes()).decode(),
        },
    }
    r = httpx.post(url(listening, "/stream/my_stream"), json=payload, timeout=60)
    assert r.status_code == 200, r.text
    assert r.json() == {"status": "success", "stream": "my_stream", "rows_processed": 3,
                        "storage_backend": "duckdb", "message": "Data processed successfully"}
    assert listening.sql("SELECT a, b FROM my_table ORDER BY a") == [(1, "foo"), (2, "bar"), (3, "baz")]


def test_original_json_endpoint_errors(py_listening):
    good_schema = base64.b64encode(pa.schema([("a", pa.int64())]).serialize()).decode()
    r = httpx.post(url(py_listening, "/stream/s"), content=b"{not json", headers={"Content-Type": "application/json"})
    assert "invalid JSON request" in error_of(r, 400, "invalid_input")
    r = httpx.post(url(py_listening, "/stream/s"), json={"config": {"target_table": "t"}, "batch": {"arrow_schema": "%%%", "data": ""}})
    assert "batch.arrow_schema is not base64" in error_of(r, 400, "invalid_input")
    r = httpx.post(url(py_listening, "/stream/s"), json={"config": {"target_table": "t"}, "batch": {"arrow_schema": good_schema, "data": "AAAA"}})
    error_of(r, 400, "invalid_input")
    r = httpx.post(url(py_listening, "/stream/s"), json={"config": {"target_table": "t", "storage_backend": "delta"}, "batch": {"arrow_schema": good_schema, "data": ""}})
    assert "arrowport stores into DuckDB" in error_of(r, 400, "invalid_input")
    assert py_listening.sql("SELECT count(*) FROM duckdb_tables() WHERE table_name = 't'") == [(0,)]


def test_health_and_stream_listings(py_listening):
    r = httpx.get(url(py_listening, "/health"))
    assert r.status_code == 200 and r.json()["status"] == "ok" and r.json()["duckdb"].startswith("v")
    assert post_ipc(py_listening, "events", ipc_bytes(events(10))).status_code == 200
    r = httpx.get(url(py_listening, "/streams"))
    assert r.status_code == 200
    streams = r.json()["streams"]
    assert [s["stream"] for s in streams] == ["events"]
    assert streams[0]["target"] == "main.events"
    assert [c["name"] for c in streams[0]["schema"]] == ["id", "timestamp", "value", "category", "metric"]
    r = httpx.get(url(py_listening, "/streams/events"))
    assert r.status_code == 200 and r.json()["schema"][0] == {"name": "id", "type": "Int64", "nullable": True}
    assert "has no table yet" in error_of(httpx.get(url(py_listening, "/streams/nope")), 404, "not_found")
    assert "no such endpoint" in error_of(httpx.get(url(py_listening, "/nothing/here")), 404, "not_found")


def test_error_statuses_and_nothing_written(py_listening):
    assert post_ipc(py_listening, "events", ipc_bytes(events(4))).status_code == 200
    # 400: not Arrow
    assert "invalid Arrow IPC" in error_of(post_ipc(py_listening, "events", b"\x01\x02\x03\x04garbage-bytes-here"), 400, "invalid_input")
    error_of(post_ipc(py_listening, "events", b"\xff\xff\xff\xff\x10\x00\x00\x00" + b"\x00" * 16), 400, "invalid_input")
    # 400: cut in the middle of a message
    body = ipc_bytes(events(100))
    assert "ends in the middle of a message" in error_of(post_ipc(py_listening, "events", body[:-30]), 400, "invalid_input")
    # 400: not zstd although it says so
    assert "does not decompress" in error_of(post_ipc(py_listening, "events", body, **{"Content-Encoding": "zstd"}), 400, "invalid_input")
    # 409: does not fit the table
    bad = pa.table({"id": ["x"], "timestamp": [1], "value": [1.0], "category": ["a"], "metric": [1.0]})
    msg = error_of(post_ipc(py_listening, "events", ipc_bytes(bad)), 409, "schema_conflict")
    assert 'column "id" is BIGINT in the table but VARCHAR in the stream' in msg
    # 415: wrong content type, wrong encoding
    r = httpx.post(url(py_listening, "/streams/events"), content=body, headers={"Content-Type": "text/csv"})
    assert "unsupported Content-Type" in error_of(r, 415, "unsupported_media_type")
    r = httpx.post(url(py_listening, "/streams/events"), content=body)
    error_of(r, 415, "unsupported_media_type")
    assert "unsupported Content-Encoding" in error_of(post_ipc(py_listening, "events", body, **{"Content-Encoding": "br"}), 415, "unsupported_media_type")
    assert py_listening.count("events") == 4


def test_body_over_the_limit_is_413(db_path):
    host = hosts.start("py20", db_path)
    try:
        host.sql(hosts.load_sql())
        rows = dict(host.sql("FROM arrowport_listen('127.0.0.1:0', max_body_bytes := 100000)"))
        base = f"http://{rows['rest']}"
        body = ipc_bytes(events(20_000))
        assert len(body) > 100_000
        r = httpx.post(f"{base}/streams/capped", content=body, headers={"Content-Type": ARROW})
        assert "over the listener's limit" in error_of(r, 413, "too_large")
        # Without Content-Length the limit is enforced while the body streams in.
        r = httpx.post(f"{base}/streams/capped", content=iter([body[i:i + 10000] for i in range(0, len(body), 10000)]), headers={"Content-Type": ARROW})
        error_of(r, 413, "too_large")
        assert host.sql("SELECT count(*) FROM duckdb_tables() WHERE table_name = 'capped'") == [(0,)]
        small = ipc_bytes(events(10))
        assert httpx.post(f"{base}/streams/capped", content=small, headers={"Content-Type": ARROW}).status_code == 200
    finally:
        host.sql("SELECT arrowport_stop()")
        assert host.close() == 0


def test_concurrent_requests_into_one_table(listening):
    errors = []

    def send(i):
        r = post_ipc(listening, "shared", ipc_bytes(events(1000, start=i * 1000)))
        if r.status_code != 200:
            errors.append(r.text)

    threads = [threading.Thread(target=send, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert listening.sql("SELECT count(*), count(DISTINCT id) FROM shared") == [(8000, 8000)]


def test_a_body_cut_off_by_a_disconnect_writes_nothing(py_listening):
    body = ipc_bytes(events(50_000), chunk=5000)
    host, port = py_listening.addr.rsplit(":", 1)
    s = socket.create_connection((host, int(port)))
    s.sendall((f"POST /streams/cut HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {ARROW}\r\n"
               f"Content-Length: {len(body)}\r\n\r\n").encode() + body[: len(body) // 2])
    wait_for(lambda: py_listening.sql("SELECT max(requests_in_flight) FROM arrowport_status()") != [(0,)],
             what="the request in flight")
    s.close()
    deadline = time.time() + 20
    while time.time() < deadline and py_listening.sql("SELECT max(requests_in_flight) FROM arrowport_status()") != [(0,)]:
        time.sleep(0.1)
    assert py_listening.sql("SELECT count(*) FROM duckdb_tables() WHERE table_name = 'cut'") == [(0,)]
    assert post_ipc(py_listening, "cut", ipc_bytes(events(3))).json()["rows"] == 3


def test_stopping_answers_503_and_rolls_back(py_listening):
    first = ipc_bytes(events(1000))
    release = threading.Event()

    def pieces():
        yield first[: len(first) // 2]
        release.wait(20)
        yield first[len(first) // 2:]

    result = {}

    def send():
        try:
            result["r"] = httpx.post(url(py_listening, "/streams/stopping"), content=pieces(), headers={"Content-Type": ARROW}, timeout=30)
        except httpx.HTTPError as e:
            result["e"] = e

    t = threading.Thread(target=send)
    t.start()
    deadline = time.time() + 20
    while time.time() < deadline and py_listening.sql("SELECT max(requests_in_flight) FROM arrowport_status()") != [(1,)]:
        time.sleep(0.05)
    assert py_listening.sql("SELECT arrowport_stop()") == [(1,)]
    release.set()
    t.join()
    assert "r" in result, result
    msg = error_of(result["r"], 503, "stopping")
    assert "rolled back" in msg
    assert result["r"].headers["retry-after"] == "1"
    assert py_listening.sql("SELECT count(*) FROM duckdb_tables() WHERE table_name = 'stopping'") == [(0,)]


def test_curl_over_http1_and_h2c(py_listening, tmp_path):
    body = tmp_path / "body.arrows"
    body.write_bytes(ipc_bytes(events(777)))
    script = os.path.join(hosts.ROOT, "test", "shell", "rest_curl.sh")
    out = subprocess.run(["bash", script, py_listening.addr, str(body)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "curl: 4 passed, 0 failed" in out.stdout, out.stdout
    assert py_listening.count("curled") == 2 * 777


def test_a_client_that_half_closes_after_its_request_gets_its_answer(py_listening):
    """Found by the fuzzer: a client that shuts down its sending side after a complete request (SHUT_WR) had the
    request committed and its connection closed without an answer."""
    body = ipc_bytes(events(12))
    host, port = py_listening.addr.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=30) as s:
        s.sendall((f"POST /streams/half HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {ARROW}\r\n"
                   f"Content-Length: {len(body)}\r\n\r\n").encode() + body)
        s.shutdown(socket.SHUT_WR)
        reply = b""
        while chunk := s.recv(65536):
            reply += chunk
    assert reply.startswith(b"HTTP/1.1 200"), reply[:300]
    assert b'"rows":12' in reply
    assert py_listening.count("half") == 12
