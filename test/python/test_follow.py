"""Followable streams (`follow := true`): every commit into the stream's table gets the next position of that
table, written into each of its rows (`arrowport_cursor`) in the same transaction; positions only grow, have no
gap, survive a restart and a kill -9, and a reader that asks for rows past the last position it read misses
nothing and sees nothing twice."""
import threading

import httpx
import pyarrow as pa
import pytest

import hosts
from clients import flight_put, ipc_bytes


def rest(addr, stream, table, key=None):
    headers = {"Content-Type": "application/vnd.apache.arrow.stream"}
    if key:
        headers["Idempotency-Key"] = key
    return httpx.post(f"http://{addr}/streams/{stream}", content=ipc_bytes(table), headers=headers, timeout=60)


def ids(start, n):
    return pa.table({"id": pa.array(range(start, start + n), pa.int64())})


def test_commits_get_growing_positions_without_gaps_under_concurrency(py_listening):
    h = py_listening
    h.sql("CREATE TABLE ev (id BIGINT)")
    h.sql("INSERT INTO ev VALUES (-1)")
    out = h.sql("SELECT stream, follow FROM arrowport_create_stream('ev', follow := true)")
    assert out == [("ev", True)]
    # A streamed request (large) and small ones (grouped) from several clients at once.
    errors = []

    def client(c):
        try:
            for i in range(15):
                start = c * 1_000_000 + i * 1000
                if i % 5 == 0:
                    assert flight_put(h.addr, "ev", ids(start, 200_000 if c == 0 and i == 0 else 50))["rows"] > 0
                else:
                    assert rest(h.addr, "ev", ids(start, 10)).status_code == 200
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=client, args=(c,)) for c in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    # The row from before the stream became followable has no position; every commit has one, contiguous.
    assert h.sql("SELECT count(*) FROM ev WHERE arrowport_cursor IS NULL") == [(1,)]
    lo, hi, distinct = h.sql("SELECT min(arrowport_cursor), max(arrowport_cursor), count(DISTINCT arrowport_cursor) FROM ev")[0]
    assert lo == 1 and hi == distinct and distinct >= 2
    total = h.sql("SELECT count(*) FROM ev WHERE arrowport_cursor IS NOT NULL")[0][0]
    expected = sum(200_000 if (c == 0 and i == 0) else (50 if i % 5 == 0 else 10) for c in range(6) for i in range(15))
    assert total == expected
    # A reader that takes what is past its last position, again and again, sees every row once.
    seen, cursor = 0, 0
    while True:
        rows = h.sql(f"SELECT count(*), max(arrowport_cursor) FROM ev WHERE arrowport_cursor > {cursor} AND arrowport_cursor <= {cursor} + 7")[0]
        if rows[0] == 0:
            break
        seen, cursor = seen + rows[0], rows[1]
    assert (seen, cursor) == (expected, hi)


def test_positions_survive_a_kill_and_a_restart_and_options_are_checked(tmp_path):
    db = str(tmp_path / "f.duckdb")
    host = hosts.start("py20", db)
    host.sql(hosts.load_sql())
    addr = host.sql("SELECT arrowport_listen('127.0.0.1:0')")[0][0]
    host.sql("CALL arrowport_create_stream('ev', follow := true)")
    for i in range(3):
        assert flight_put(addr, "ev", ids(i * 10, 5))["rows"] == 5
    host.proc.kill()
    host.proc.wait()
    host = hosts.start("py20", db)
    try:
        host.sql(hosts.load_sql())
        assert host.sql("SELECT follow FROM arrowport_streams()") == [(True,)]
        addr = host.sql("SELECT arrowport_listen('127.0.0.1:0')")[0][0]
        assert rest(addr, "ev", ids(100, 5)).status_code == 200
        assert host.sql("SELECT arrowport_cursor, count(*) FROM ev GROUP BY 1 ORDER BY 1") == [(1, 5), (2, 5), (3, 5), (4, 5)]
        with pytest.raises(hosts.HostError, match="a stream that replaces or merges rows cannot be followed"):
            host.sql("CALL arrowport_create_stream('k', follow := true, key := ['id'], on_conflict := 'update')")
        with pytest.raises(hosts.HostError, match="cannot be followed"):
            host.sql("CALL arrowport_alter_stream('ev', mode := 'replace')")
        host.sql("SELECT arrowport_stop()")
    finally:
        host.close()
