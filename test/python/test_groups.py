"""Group commit end to end: many small requests at once share transactions, each acknowledged only after the
commit that holds its rows; one that fails is taken out and the others still land."""
import threading
import time

import httpx
import pyarrow as pa
import pytest

from clients import flight_put, ipc_bytes
from testdata import events

ARROW = "application/vnd.apache.arrow.stream"


def test_concurrent_small_requests_land_exactly_once(listening):
    results = []

    def client(k):
        for i in range(10):
            n = k * 10 + i
            t = events(100, start=n * 100)
            if k % 2:
                r = httpx.post(f"http://{listening.addr}/streams/small", content=ipc_bytes(t), headers={"Content-Type": ARROW}, timeout=60)
                results.append((r.status_code, r.json()["rows"]))
            else:
                results.append((200, flight_put(listening.addr, "small", t)["rows"]))

    threads = [threading.Thread(target=client, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [(200, 100)] * 80
    assert listening.sql("SELECT count(*), count(DISTINCT id), min(id), max(id) FROM small") == [(8000, 8000, 0, 7999)]


def test_a_failing_request_does_not_take_its_group_down(py_listening):
    py_listening.sql("CREATE TABLE keyed (id BIGINT PRIMARY KEY, timestamp BIGINT, value DOUBLE, category VARCHAR, metric DOUBLE)")
    outcomes = {}
    start = threading.Barrier(16)

    def client(k):
        # Clients 0 and 1 send the same keys: whichever commits second violates the primary key.
        t = events(50, start=0 if k < 2 else k * 50)
        start.wait()
        r = httpx.post(f"http://{py_listening.addr}/streams/keyed", content=ipc_bytes(t), headers={"Content-Type": ARROW}, timeout=60)
        outcomes[k] = (r.status_code, r.json())

    threads = [threading.Thread(target=client, args=(k,)) for k in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    failed = {k: v for k, v in outcomes.items() if v[0] != 200}
    assert len(failed) == 1 and set(failed) <= {0, 1}, outcomes
    (status, body), = failed.values()
    assert status == 409 and "Constraint Error" in body["error"]["message"], body
    assert all(v[1]["rows"] == 50 for k, v in outcomes.items() if k not in failed)
    assert py_listening.sql("SELECT count(*), count(DISTINCT id) FROM keyed") == [(15 * 50, 15 * 50)]


def test_a_group_window_lets_requests_that_arrive_within_it_share_one_commit(py_listening):
    """`group_window`: a group commit waits that long after its first small request for more. Three requests sent
    50 ms apart land in one transaction (one `now()` among their rows) with a window of a second, in three
    without one; the option is checked."""
    h = py_listening
    h.sql("CREATE TABLE g (i BIGINT, t TIMESTAMPTZ DEFAULT now())")
    h.sql("CALL arrowport_create_stream('g', schema_policy := 'by_name')")
    windowed = h.sql("FROM arrowport_listen('127.0.0.1:0', group_window := 1)")[0][1]

    def send(addr, base):
        threads = []
        for k in range(3):
            t = pa.table({"i": pa.array([base + k], pa.int64())})
            threads.append(threading.Thread(target=lambda t=t: results.append(
                httpx.post(f"http://{addr}/streams/g", content=ipc_bytes(t), headers={"Content-Type": ARROW},
                           timeout=60).status_code)))
            threads[-1].start()
            time.sleep(0.05)
        for t in threads:
            t.join()

    results = []
    send(windowed, 0)
    send(h.addr, 10)
    assert results == [200] * 6
    assert h.sql("SELECT i >= 10, count(*), count(DISTINCT t) FROM g GROUP BY ALL ORDER BY 1") == [(False, 3, 1), (True, 3, 3)]
    with pytest.raises(Exception, match=r"invalid value for option group_window: 2 \(seconds, 0 or more and at most 1\)"):
        h.sql("FROM arrowport_listen('127.0.0.1:0', group_window := 2)")
    for bad in ("-1", "11"):
        with pytest.raises(Exception, match=rf"invalid value for option commit_retry_wait: {bad} \(seconds, 0 or more and at most 10\)"):
            h.sql(f"FROM arrowport_listen('127.0.0.1:0', commit_retry_wait := {bad})")
