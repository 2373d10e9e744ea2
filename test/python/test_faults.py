"""Faults a client or the machine can cause, each answered with the right status or a rollback, nothing partial
visible, and the host serving others afterwards: a body cut at random byte offsets over HTTP/1.1, HTTP/2 and
gRPC, and a database whose disk is full. (Stalls, stops mid-request and constraint violations have their own
tests in test_security, test_rest and test_groups.)"""
import os
import random
import socket
import subprocess

import time

import h2.config
import h2.connection
import h2.settings
import httpx
import pyarrow as pa
import pytest

import flightraw
import hosts
from clients import ipc_bytes
from testdata import events

ARROW = "application/vnd.apache.arrow.stream"


def h2_send_cut(port, path, content_type, payload, cut):
    """An HTTP/2 request (prior knowledge) whose body is cut after `cut` bytes: the connection is closed there."""
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    conn = h2.connection.H2Connection(config=h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 1 << 24})
    sid = conn.get_next_available_stream_id()
    conn.send_headers(sid, [(":method", "POST"), (":path", path), (":scheme", "http"), (":authority", f"127.0.0.1:{port}"),
                            ("content-type", content_type), ("te", "trailers")])
    s.sendall(conn.data_to_send())
    sent = 0
    while sent < cut:
        window = min(conn.local_flow_control_window(sid), conn.max_outbound_frame_size)
        if window <= 0:
            for event in conn.receive_data(s.recv(65536)):
                pass
            s.sendall(conn.data_to_send())
            continue
        chunk = payload[sent:min(cut, sent + window)]
        conn.send_data(sid, chunk)
        sent += len(chunk)
        s.sendall(conn.data_to_send())
    s.close()


def grpc_frames(messages):
    return b"".join(b"\x00" + len(m).to_bytes(4, "big") + m for m in messages)


def test_bodies_cut_at_random_offsets_leave_nothing_behind(tmp_path):
    h = hosts.start("py20", str(tmp_path / "cut.duckdb"))
    h.sql(hosts.load_sql())
    addr = h.sql("SELECT arrowport_listen('127.0.0.1:0')")[0][0]
    port = int(addr.rsplit(":", 1)[1])
    rng = random.Random(20261203)
    body = ipc_bytes(events(50_000), chunk=5_000)
    pairs = flightraw.stream_messages(body)
    messages = [flightraw.flight_data(flightraw.descriptor(1, path=["cut_grpc"]) if i == 0 else None, header=hd, body=b)
                for i, (hd, b) in enumerate(pairs)]
    framed = grpc_frames(messages)
    for _ in range(6):
        # HTTP/1.1: the full Content-Length announced, the connection closed after `cut` bytes of the body.
        cut = rng.randrange(1, len(body))
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall((f"POST /streams/cut_h1 HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {ARROW}\r\n"
                       f"Content-Length: {len(body)}\r\n\r\n").encode() + body[:cut])
        h2_send_cut(port, "/streams/cut_h2", ARROW, body, rng.randrange(1, len(body)))
        h2_send_cut(port, "/arrow.flight.protocol.FlightService/DoPut", "application/grpc", framed, rng.randrange(1, len(framed)))
    # Every cut request is rolled back (wait for the ones still winding down), and the host serves on.
    for _ in range(100):
        if h.sql("SELECT coalesce(max(requests_in_flight), 0) FROM arrowport_status()") == [(0,)]:
            break
        time.sleep(0.1)
    assert h.sql("SELECT count(*) FROM duckdb_tables() WHERE table_name LIKE 'cut_%'") == [(0,)]
    # Each cut reached arrowport and was counted as a failed request (6 over HTTP/1.1, 6 over HTTP/2, 6 gRPC).
    failed = dict(h.sql("SELECT protocol, sum(requests_failed)::BIGINT FROM arrowport_metrics() GROUP BY protocol"))
    assert failed == {"rest": 12, "flight": 6}, failed
    r = httpx.post(f"http://{addr}/streams/fine", content=ipc_bytes(events(5)), headers={"Content-Type": ARROW}, timeout=30)
    assert r.status_code == 200 and r.json()["rows"] == 5
    h.sql("SELECT arrowport_stop()")
    assert h.close() == 0


@pytest.fixture
def small_disk(tmp_path):
    mount = tmp_path / "disk"
    mount.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=6m", "tmpfs", str(mount)], capture_output=True, text=True)
    if made.returncode != 0:
        pytest.skip(f"cannot make a small file system here (mount -t tmpfs: {made.stderr.strip()})")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def test_a_full_disk_fails_the_request_that_meets_it_and_keeps_every_acknowledged_row(small_disk):
    h = hosts.start("py20", os.path.join(small_disk, "full.duckdb"))
    h.sql(hosts.load_sql())
    addr = h.sql("SELECT arrowport_listen('127.0.0.1:0')")[0][0]
    acked, failure = 0, None
    for i in range(60):
        r = httpx.post(f"http://{addr}/streams/t", content=ipc_bytes(events(20_000, start=i * 20_000)),
                       headers={"Content-Type": ARROW}, timeout=60)
        if r.status_code != 200:
            failure = r
            break
        acked += r.json()["rows"]
    assert failure is not None, "the 6 MiB disk never filled"
    assert failure.status_code == 500 and "No space left on device" in failure.json()["error"]["message"], failure.text
    assert acked > 0 and h.sql("SELECT count(*), count(DISTINCT id) FROM t") == [(acked, acked)]
    assert httpx.get(f"http://{addr}/health", timeout=10).status_code == 200
    h.sql("SELECT arrowport_stop()")
    assert h.close() == 0
