"""Group commit end to end: many small requests at once share transactions, each acknowledged only after the
commit that holds its rows; one that fails is taken out and the others still land."""
import threading

import httpx
import pyarrow as pa

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
