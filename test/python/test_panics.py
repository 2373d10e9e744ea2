"""A panic inside a request's transaction fails that request only: the transaction guard rolls it back while the
panic unwinds, and the writer that panicked serves the next request normally. The host's environment variable
ARROWPORT_TEST_PANIC_TABLE (a test hook, only in the tests' build `make test-hooks`) names a table whose requests
panic after their INSERT, inside the transaction."""
import httpx

import hosts
from clients import flight_put, ipc_bytes
from testdata import events

ARROW = "application/vnd.apache.arrow.stream"


def post(addr, stream, table):
    return httpx.post(f"http://{addr}/streams/{stream}", content=ipc_bytes(table), headers={"Content-Type": ARROW}, timeout=120)


def test_a_panic_inside_a_transaction_rolls_back_and_the_writer_serves_on(tmp_path, monkeypatch):
    monkeypatch.setenv("ARROWPORT_TEST_PANIC_TABLE", "boom")
    host = hosts.start("py20", str(tmp_path / "panic.duckdb"))
    host.sql(hosts.load_sql(hooks=True))
    addr = host.sql("SELECT arrowport_listen('127.0.0.1:0')")[0][0]
    landed = 0
    # Small requests go to the group committer, one thread with one connection: every "fine" request below is
    # served by the very writer that panicked just before it (a transaction left open would refuse its BEGIN).
    for i in range(3):
        r = post(addr, "boom", events(10))
        assert r.status_code == 500 and r.json()["error"] == {"code": "internal", "message": "internal error"}, r.text
        r = post(addr, "fine", events(10, start=landed))
        assert r.status_code == 200 and r.json()["rows"] == 10, r.text
        landed += 10
    # Large requests (over the 4 MiB group limit) stream through the pool's other writers; each panics in turn.
    big = 200_000
    for i in range(10):
        r = post(addr, "boom", events(big))
        assert r.status_code == 500, r.text
        assert flight_put(addr, "fine", events(big, start=landed))["rows"] == big
        landed += big
    assert host.sql("SELECT count(*), count(DISTINCT id), min(id), max(id) FROM fine") == [(landed, landed, 0, landed - 1)]
    # The panicking requests created their table inside the transaction: rolled back, it does not exist.
    assert host.sql("SELECT count(*) FROM duckdb_tables() WHERE table_name = 'boom'") == [(0,)]
    assert host.sql("SELECT arrowport_stop()") == [(1,)]
    assert host.close() == 0
    assert "panicked" not in host.stderr()


def test_the_library_make_builds_has_no_test_hook(tmp_path, monkeypatch):
    monkeypatch.setenv("ARROWPORT_TEST_PANIC_TABLE", "boom")
    host = hosts.start("py20", str(tmp_path / "plain.duckdb"))
    host.sql(hosts.load_sql())
    addr = host.sql("SELECT arrowport_listen('127.0.0.1:0')")[0][0]
    r = post(addr, "boom", events(10))
    assert r.status_code == 200 and r.json()["rows"] == 10, r.text
    assert host.sql("SELECT count(*) FROM boom") == [(10,)]
    assert host.close() == 0
