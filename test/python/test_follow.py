"""Followable streams (`follow := true`): every row a commit lands gets the next position of its table
(`arrowport_cursor`) in the same transaction; positions only grow, have no gap, survive a restart and a kill -9.
Followers over Flight (`DoGet` with a follow ticket) get every row past their cursor once, in order, then live,
across reconnects, host kills and restarts; the host's stop ends them cleanly."""
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
    total = h.sql("SELECT count(*) FROM ev WHERE arrowport_cursor IS NOT NULL")[0][0]
    expected = sum(200_000 if (c == 0 and i == 0) else (50 if i % 5 == 0 else 10) for c in range(6) for i in range(15))
    assert total == expected
    assert (lo, hi, distinct) == (1, expected, expected)
    # A reader that takes what is past its last position, again and again, sees every row once.
    seen, cursor = 0, 0
    while True:
        rows = h.sql(f"SELECT count(*), max(arrowport_cursor) FROM ev WHERE arrowport_cursor > {cursor} AND arrowport_cursor <= {cursor} + 20000")[0]
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
        assert host.sql("SELECT min(arrowport_cursor), max(arrowport_cursor), count(DISTINCT arrowport_cursor) FROM ev") == [(1, 20, 20)]
        assert host.sql("SELECT min(arrowport_cursor) FROM ev WHERE id >= 100") == [(16,)]
        with pytest.raises(hosts.HostError, match="a stream that replaces or merges rows cannot be followed"):
            host.sql("CALL arrowport_create_stream('k', follow := true, key := ['id'], on_conflict := 'update')")
        with pytest.raises(hosts.HostError, match="cannot be followed"):
            host.sql("CALL arrowport_alter_stream('ev', mode := 'replace')")
        host.sql("SELECT arrowport_stop()")
    finally:
        host.close()


# ---- following over Flight ---------------------------------------------------------------------------------------

import json  # noqa: E402
import random  # noqa: E402
import time  # noqa: E402

import pyarrow.flight as fl  # noqa: E402


def follow(addr, stream, after, token=None):
    options = fl.FlightCallOptions(headers=[(b"authorization", f"Bearer {token}".encode())] if token else [])
    client = fl.connect(f"grpc://{addr}")
    return client, client.do_get(fl.Ticket(json.dumps({"follow": stream, "after": after})), options=options)


def produce(addr, requests, most):
    """A producer thread writing `requests` requests of 1 to `most` rows to `ev` (ids i*100...), over Flight and
    REST in turn; started, with the event it sets when done."""
    done = threading.Event()

    def run():
        for i in range(requests):
            t = ids(i * 100, 1 + i % most)
            if i % 2:
                assert flight_put(addr, "ev", t)["rows"] == t.num_rows
            else:
                assert rest(addr, "ev", t).status_code == 200
            time.sleep(0.004)
        done.set()

    thread = threading.Thread(target=run)
    thread.start()
    return thread, done


def test_a_follower_that_reconnects_at_random_gets_every_row_once_in_order(py_listening):
    h = py_listening
    h.sql("CALL arrowport_create_stream('ev', follow := true)")
    total = 120
    producer, _ = produce(h.addr, total, 7)
    expected = sum(1 + i % 7 for i in range(total))
    rng = random.Random(7)
    seen, cursors, cursor, reconnects = [], [], "start", 0
    deadline = time.time() + 60
    while len(seen) < expected and time.time() < deadline:
        client, reader = follow(h.addr, "ev", cursor)
        for _ in range(rng.randrange(1, 6)):
            chunk = reader.read_chunk()
            seen.extend(chunk.data.column("id").to_pylist())
            cursors.extend(chunk.data.column("arrowport_cursor").to_pylist())
            cursor = chunk.app_metadata.to_pybytes().decode()
            assert int(cursor) == cursors[-1]
            if len(seen) >= expected:
                break
        client.close()
        reconnects += 1
    producer.join()
    assert reconnects > 5
    assert len(seen) == expected and len(set(seen)) == expected, "a row missing or repeated"
    assert cursors == sorted(cursors) and cursors == list(range(1, expected + 1))
    assert sorted(seen) == sorted(r[0] for r in h.sql("SELECT id FROM ev"))


def test_eight_followers_see_the_same_rows_live_and_stop_ends_them_cleanly(py_listening):
    h = py_listening
    h.sql("CALL arrowport_create_stream('ev', follow := true)")
    flight_put(h.addr, "ev", ids(0, 3))
    results = [[] for _ in range(8)]
    ended = []

    def follower(n):
        client, reader = follow(h.addr, "ev", "end" if n == 7 else 0)
        try:
            for chunk in reader:
                results[n].extend(chunk.data.column("id").to_pylist())
            ended.append(n)  # the stream ended cleanly (no error)
        finally:
            client.close()

    threads = [threading.Thread(target=follower, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    time.sleep(0.5)
    for i in range(1, 6):
        flight_put(h.addr, "ev", ids(i * 10, 2))
    wanted = [0, 1, 2] + [i * 10 + k for i in range(1, 6) for k in range(2)]

    def caught_up():
        return all(r == wanted for r in results[:7]) and results[7] == wanted[3:]

    from clients import wait_for
    wait_for(caught_up, 10, "every follower to receive every commit")
    # Who follows, how far, how much: SQL and Prometheus.
    rows = h.sql("SELECT stream, protocol, cursor, lag_rows, rows_sent, bytes_sent > 0 FROM arrowport_followers() ORDER BY rows_sent")
    assert rows == [("ev", "flight", 13, 0, 10, True)] + [("ev", "flight", 13, 0, 13, True)] * 7
    text = httpx.get(f"http://{h.addr}/metrics").text
    assert "arrowport_followers 8" in text
    assert 'arrowport_followed_rows_total{stream="ev"} 101' in text
    assert 'arrowport_follower_lag_rows{stream="ev"} 0' in text
    assert h.sql("SELECT arrowport_stop()") == [(1,)]
    for t in threads:
        t.join(15)
    assert sorted(ended) == list(range(8))
    assert h.sql("SELECT count(*) FROM arrowport_followers()") == [(0,)]


def test_a_follower_resumes_exactly_after_the_host_is_killed(tmp_path):
    db = str(tmp_path / "k.duckdb")
    host = hosts.start("py20", db)
    host.sql(hosts.load_sql())
    addr = host.sql("SELECT arrowport_listen('127.0.0.1:0')")[0][0]
    host.sql("CALL arrowport_create_stream('ev', follow := true)")
    for i in range(4):
        flight_put(addr, "ev", ids(i * 10, 3))
    client, reader = follow(addr, "ev", 0)
    chunk = reader.read_chunk()
    first = chunk.data.column("id").to_pylist()
    cursor = chunk.app_metadata.to_pybytes().decode()
    client.close()
    host.proc.kill()
    host.proc.wait()
    host = hosts.start("py20", db)
    try:
        host.sql(hosts.load_sql())
        addr = host.sql("SELECT arrowport_listen('127.0.0.1:0')")[0][0]
        flight_put(addr, "ev", ids(100, 2))
        client, reader = follow(addr, "ev", cursor)
        rest_ids = []
        while len(first) + len(rest_ids) < 14:
            rest_ids.extend(reader.read_chunk().data.column("id").to_pylist())
        client.close()
        assert first + rest_ids == [0, 1, 2, 10, 11, 12, 20, 21, 22, 30, 31, 32, 100, 101]
        host.sql("SELECT arrowport_stop()")
    finally:
        host.close()


def read_from_start(addr, stream):
    """Every row of a stream a follower gets from the start, once caught up: ids and cursors."""
    client = fl.connect(f"grpc://{addr}")
    try:
        table = client.do_get(fl.Ticket(json.dumps({"follow": stream, "after": "start", "wait": 0}))).read_all()
    finally:
        client.close()
    return table.column("id").to_pylist(), table.column("arrowport_cursor").to_pylist()


def test_history_is_read_in_table_order_and_a_row_out_of_it_makes_the_reader_sort(listening):
    """A DuckDB table holds a followable stream's rows in position order (commits take turns and number their rows
    as they append them), so history is read without sorting; a read that meets a row out of that order (a user
    rewrote positions) hands over none of its batch and reads sorted from its last row on. On every host kind."""
    h = listening
    for s in ("ev", "early", "late"):
        h.sql(f"CALL arrowport_create_stream('{s}', follow := true)")
    # Streamed requests of many batches (DuckDB inserts them in parallel) with small ones between, at once.
    errors = []

    def client(c):
        try:
            for i in range(4):
                start = c * 10_000_000 + i * 1_000_000
                if c == 0:
                    assert flight_put(h.addr, "ev", ids(start, 150_000), chunk=5_000)["rows"] == 150_000
                else:
                    assert rest(h.addr, "ev", ids(start, 7)).status_code == 200
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=client, args=(c,)) for c in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    total = 4 * 150_000 + 2 * 4 * 7
    # The premise, in the table itself: row order is position order.
    assert h.sql("SELECT count(*) FROM (SELECT arrowport_cursor - lag(arrowport_cursor) OVER (ORDER BY rowid) AS d "
                 "FROM ev) WHERE d <> 1") == [(0,)]
    got, cursors = read_from_start(h.addr, "ev")
    assert cursors == list(range(1, total + 1))
    assert got == [r[0] for r in h.sql("SELECT id FROM ev ORDER BY arrowport_cursor")]
    # Positions a user rewrote: ten rows out of order within the first read (the shared read past the tail) in
    # `early`, past it (the follower's own read, catching up) in `late`.
    for stream, at in (("early", 10), ("late", 66_000)):
        assert flight_put(h.addr, stream, ids(0, 70_000), chunk=10_000)["rows"] == 70_000
        h.sql(f"UPDATE {stream} SET arrowport_cursor = arrowport_cursor + 1000000 "
              f"WHERE arrowport_cursor BETWEEN {at + 1} AND {at + 10}")
        got, cursors = read_from_start(h.addr, stream)
        moved = list(range(at + 1_000_001, at + 1_000_011))
        assert cursors == [c for c in range(1, 70_001) if not at < c <= at + 10] + moved, stream
        assert got == [c - 1 for c in cursors if c < 1_000_000] + [c - 1_000_001 for c in moved], stream


def test_following_refuses_clearly(tmp_path):
    host = hosts.start("py20", str(tmp_path / "e.duckdb"))
    try:
        host.sql(hosts.load_sql())
        secret = host.sql("SELECT token FROM arrowport_create_token('writer')")[0][0]
        addr = host.sql("SELECT arrowport_listen('127.0.0.1:0')")[0][0]
        host.sql("CALL arrowport_create_stream('ev', follow := true)")
        host.sql("CALL arrowport_create_stream('plain')")
        flight_put(addr, "ev", ids(0, 2))

        def refused(stream, after, error, text, token=None):
            client, _ = None, None
            with pytest.raises(error, match=text):
                client, reader = follow(addr, stream, after, token)
                reader.read_all()
            if client:
                client.close()

        refused("nope", 0, pa.ArrowException, 'unknown stream "nope"')
        refused("plain", 0, pa.ArrowException, 'stream "plain" is not followable')
        refused("ev", 99, pa.ArrowException, 'cursor 99 is past the last position of stream "ev" \\(2\\)')
        refused("ev", "yesterday", pa.ArrowException, "after must be a cursor")
        refused("ev", 0, fl.FlightUnauthorizedError, 'token "writer" may write, not read', token=secret)
        host.sql("SELECT arrowport_stop()")
    finally:
        host.close()


def test_reading_is_a_permission_of_its_own(tmp_path):
    db = str(tmp_path / "r.duckdb")
    host = hosts.start("py20", db)
    try:
        host.sql(hosts.load_sql())
        reader = host.sql("SELECT token FROM arrowport_create_token('dash', streams := ['ev'], access := 'read')")[0][0]
        both = host.sql("SELECT token FROM arrowport_create_token('etl', access := 'read_write')")[0][0]
        writer = host.sql("SELECT token FROM arrowport_create_token('old')")[0][0]
        with pytest.raises(hosts.HostError, match="allowed: write, read, read_write"):
            host.sql("CALL arrowport_create_token('x', access := 'admin')")
        assert host.sql("SELECT name, access FROM arrowport_tokens() ORDER BY name") == [
            ("dash", "read"), ("etl", "read_write"), ("old", "write")]
        addr = host.sql("SELECT address FROM arrowport_listen('127.0.0.1:0', auth := 'token')")[0][0]
        host.sql("CALL arrowport_create_stream('ev', follow := true)")
        host.sql("CALL arrowport_create_stream('other', follow := true)")
        # Writing: the write and read_write tokens; not the read one.
        assert flight_put(addr, "ev", ids(0, 2), token=writer)["rows"] == 2
        assert flight_put(addr, "other", ids(0, 1), token=both)["rows"] == 1
        with pytest.raises(fl.FlightUnauthorizedError, match='token "dash" is not allowed to use stream "ev"'):
            flight_put(addr, "ev", ids(5, 1), token=reader)
        # Following: the read token its stream only, the read_write one any.
        client, r = follow(addr, "ev", 0, reader)
        assert r.read_chunk().data.column("id").to_pylist() == [0, 1]
        client.close()
        with pytest.raises(fl.FlightUnauthorizedError, match='token "dash" is not allowed to follow stream "other"'):
            follow(addr, "other", 0, reader)[1].read_all()
        client, r = follow(addr, "other", 0, both)
        assert r.read_chunk().data.column("id").to_pylist() == [0]
        client.close()
        host.sql("SELECT arrowport_stop()")
        host.close()
        host = hosts.start("py20", db)
        host.sql(hosts.load_sql())
        assert host.sql("SELECT name, access FROM arrowport_tokens() ORDER BY name")[0] == ("dash", "read")
        host.sql("SELECT arrowport_stop()")
    finally:
        host.close()


# ---- following over REST -----------------------------------------------------------------------------------------

def test_rest_follow_as_an_arrow_stream_with_curl_and_as_server_sent_events(py_listening):
    import subprocess
    h = py_listening
    h.sql("CALL arrowport_create_stream('ev', follow := true)")
    flight_put(h.addr, "ev", pa.table({"id": pa.array([1, 2], pa.int64()), "note": ["line\nbreak", None]}))
    # curl reads the Arrow IPC stream, which stays open; a commit while it reads arrives on it.
    curl = subprocess.Popen(["curl", "-sSN", f"http://{h.addr}/streams/ev/follow?after=1"], stdout=subprocess.PIPE)
    time.sleep(0.5)
    flight_put(h.addr, "ev", pa.table({"id": pa.array([3], pa.int64()), "note": ["x"]}))
    time.sleep(0.5)
    assert h.sql("SELECT arrowport_stop()") == [(1,)]
    out, _ = curl.communicate(timeout=15)
    assert curl.returncode == 0, "the stop ends the body cleanly"
    rows = pa.ipc.open_stream(out).read_all()
    assert rows.column("id").to_pylist() == [2, 3] and rows.column("arrowport_cursor").to_pylist() == [2, 3]
    # Each batch's IPC message carries the cursor of its last row; the stream ends with its end-of-stream marker.
    reader, got = pa.ipc.open_stream(out), []
    while True:
        try:
            batch, metadata = reader.read_next_batch_with_custom_metadata()
        except StopIteration:
            break
        got.append((batch.column("id").to_pylist(), metadata[b"arrowport_cursor"]))
    assert got == [([2], b"2"), ([3], b"3")]
    assert out.endswith(b"\xff\xff\xff\xff\x00\x00\x00\x00")
    h.sql("SELECT arrowport_listen('" + h.addr + "')")
    # Server-sent events: one per row, its cursor as the event id, the row as JSON; Last-Event-ID resumes.
    with httpx.stream("GET", f"http://{h.addr}/streams/ev/follow", headers={"Accept": "text/event-stream"}, timeout=10) as r:
        assert r.status_code == 200 and r.headers["content-type"] == "text/event-stream"
        lines = []
        for line in r.iter_lines():
            lines.append(line)
            if len(lines) == 6:
                break
    assert lines == ['id: 1', 'data: {"id":1,"note":"line\\nbreak","arrowport_cursor":1}', '',
                     'id: 2', 'data: {"id":2,"note":null,"arrowport_cursor":2}', '']
    with httpx.stream("GET", f"http://{h.addr}/streams/ev/follow", headers={"Accept": "text/event-stream", "Last-Event-ID": "2"},
                      timeout=10) as r:
        first = next(r.iter_lines())
    assert first == "id: 3"
    # Refusals are JSON errors with their code.
    r = httpx.get(f"http://{h.addr}/streams/nope/follow")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    r = httpx.get(f"http://{h.addr}/streams/ev/follow?after=77")
    assert r.status_code == 400 and "cursor 77 is past the last position" in r.json()["error"]["message"]
    r = httpx.get(f"http://{h.addr}/streams/ev/follow", headers={"Origin": "http://evil.example"})
    assert r.status_code == 403


# ---- arrowport_follow: a DuckDB pulls a remote stream --------------------------------------------------------------

PULL = """
SET VARIABLE cur = (SELECT c FROM cursor);
BEGIN;
CREATE OR REPLACE TEMP TABLE fresh AS
  FROM arrowport_follow('{url}', 'ev', after := getvariable('cur'), max_rows := {max_rows}{extra});
INSERT INTO local_ev SELECT * EXCLUDE (arrowport_cursor) FROM fresh;
UPDATE cursor SET c = (SELECT max(arrowport_cursor) FROM fresh) WHERE EXISTS (FROM fresh);
COMMIT
"""


def pull(other, url, max_rows, extra=""):
    for statement in PULL.format(url=url, max_rows=max_rows, extra=extra).split(";"):
        if statement.strip():
            other.sql(statement)


def test_a_duckdb_pulls_a_remote_stream_exactly_once_while_it_is_written(py_listening, tmp_path):
    """The loop of README: random cuts (max_rows), both transports, a producer writing all along; every row
    once, in position order. A pull that fails midway (the remote stops) changes nothing and the next resumes."""
    h = py_listening
    h.sql("CALL arrowport_create_stream('ev', follow := true)")
    other = hosts.start("py15", str(tmp_path / "other.duckdb"))
    try:
        other.sql(hosts.load_sql())
        other.sql("CREATE TABLE local_ev (id BIGINT)")
        other.sql("CREATE TABLE cursor AS SELECT 0::BIGINT AS c")
        total = 150
        producer, done = produce(h.addr, total, 9)
        from clients import wait_for
        # Before the first commit the stream has no table, so no columns to pull.
        wait_for(lambda: h.sql("SELECT count(*) FROM duckdb_tables() WHERE table_name = 'ev'") == [(1,)], 10, "the first commit")
        rng = random.Random(11)
        urls = [f"grpc://{h.addr}", f"http://{h.addr}"]
        pulls = 0
        deadline = time.time() + 90
        while time.time() < deadline:
            caught_up = done.is_set()
            pull(other, urls[pulls % 2], rng.choice([1, 3, 7, 40, 5000]))
            pulls += 1
            if caught_up and other.sql("SELECT c FROM cursor")[0][0] == h.sql("SELECT max(arrowport_cursor) FROM ev")[0][0]:
                break
        producer.join()
        expected = sum(1 + i % 9 for i in range(total))
        assert pulls > 20
        mine = [r[0] for r in other.sql("SELECT id FROM local_ev ORDER BY rowid")]
        theirs = [r[0] for r in h.sql("SELECT id FROM ev ORDER BY arrowport_cursor")]
        assert len(mine) == expected and mine == theirs, "a row missing, repeated or out of order"
        # A pull that fails (nothing listens) leaves both the rows and the cursor as they were.
        h.sql("SELECT arrowport_stop()")
        with pytest.raises(hosts.HostError, match="could not connect"):
            pull(other, urls[0], 10, ", timeout := 2")
        other.sql("ROLLBACK")
        assert other.sql("SELECT count(*), (SELECT c FROM cursor) FROM local_ev") == [(expected, expected)]
    finally:
        other.close()


def test_arrowport_follow_waits_for_new_rows_and_ends_once_caught_up(py_listening, tmp_path):
    h = py_listening
    h.sql("CALL arrowport_create_stream('ev', follow := true)")
    h.sql("CALL arrowport_create_stream('plain')")
    flight_put(h.addr, "ev", pa.table({"id": pa.array([1, 2], pa.int64()), "score": pa.array([1.5, None], pa.float64()),
                                       "tags": pa.array([["a"], []], pa.list_(pa.string()))}))
    flight_put(h.addr, "plain", ids(0, 1))
    other = hosts.start("cli", str(tmp_path / "other.duckdb"))
    try:
        other.sql(hosts.load_sql())
        url = f"http://{h.addr}"
        # Nothing new: ends at once (no wait), or after the wait.
        assert other.sql(f"SELECT count(*) FROM arrowport_follow('{url}', 'ev', after := 'end')") == [(0,)]
        started = time.time()
        assert other.sql(f"SELECT count(*) FROM arrowport_follow('{url}', 'ev', after := 2, wait := 1.5)") == [(0,)]
        assert 1.4 < time.time() - started < 10
        # A commit during the wait arrives, and the call ends once caught up, long before the wait is over.
        timer = threading.Timer(0.7, lambda: flight_put(h.addr, "ev", pa.table({
            "id": pa.array([3], pa.int64()), "score": pa.array([None], pa.float64()),
            "tags": pa.array([None], pa.list_(pa.string()))})))
        timer.start()
        started = time.time()
        rows = other.sql(f"SELECT id, score, tags, arrowport_cursor FROM arrowport_follow('grpc://{h.addr}', 'ev', after := 'end', wait := 30)")
        timer.join()
        assert rows == [(3, None, None, 3)] and time.time() - started < 10
        # Types come through as the remote's table has them.
        assert other.sql(f"SELECT id, score, tags, arrowport_cursor FROM arrowport_follow('{url}', 'ev', max_rows := 2)") == [
            (1, 1.5, ["a"], 1), (2, None, [], 2)]
        assert other.sql(f"SELECT column_name, column_type FROM (DESCRIBE FROM arrowport_follow('{url}', 'ev'))") == [
            ("id", "BIGINT"), ("score", "DOUBLE"), ("tags", "VARCHAR[]"), ("arrowport_cursor", "BIGINT")]
        # Refusals name the problem.
        for stream, after, text in [("nope", 0, 'unknown stream "nope"'), ("plain", 0, 'stream "plain" is not followable'),
                                    ("ev", 99, "cursor 99 is past the last position"), ("ev", "soon", "after must be a cursor")]:
            for u in (url, f"grpc://{h.addr}"):
                with pytest.raises(hosts.HostError, match=text):
                    other.sql(f"FROM arrowport_follow('{u}', '{stream}', after := '{after}')")
        with pytest.raises(hosts.HostError, match="wait"):
            other.sql(f"FROM arrowport_follow('{url}', 'ev', wait := -1)")
        with pytest.raises(hosts.HostError, match="max_rows"):
            other.sql(f"FROM arrowport_follow('{url}', 'ev', max_rows := 0)")
        with pytest.raises(hosts.HostError, match="unsupported scheme"):
            other.sql("FROM arrowport_follow('ftp://x:1', 'ev')")
    finally:
        other.close()


def test_arrowport_follow_needs_a_token_that_may_read_and_is_not_reachable_over_the_network(tmp_path):
    host = hosts.start("py20", str(tmp_path / "t.duckdb"))
    other = hosts.start("py20", str(tmp_path / "o.duckdb"))
    try:
        host.sql(hosts.load_sql())
        other.sql(hosts.load_sql())
        reader = host.sql("SELECT token FROM arrowport_create_token('dash', streams := ['ev'], access := 'read')")[0][0]
        writer = host.sql("SELECT token FROM arrowport_create_token('w')")[0][0]
        anything = host.sql("SELECT token FROM arrowport_create_token('all', access := 'read_write')")[0][0]
        addr = host.sql("SELECT address FROM arrowport_listen('127.0.0.1:0', auth := 'token', sql := 'read_only')")[0][0]
        host.sql("CALL arrowport_create_stream('ev', follow := true)")
        flight_put(addr, "ev", ids(0, 3), token=writer)
        for url in (f"grpc://{addr}", f"http://{addr}"):
            assert other.sql(f"SELECT list(id) FROM arrowport_follow('{url}', 'ev', token := '{reader}')") == [([0, 1, 2],)]
            with pytest.raises(hosts.HostError, match='token "w" may write, not read'):
                other.sql(f"FROM arrowport_follow('{url}', 'ev', token := '{writer}')")
            with pytest.raises(hosts.HostError, match="401|Unauthenticated|token"):
                other.sql(f"FROM arrowport_follow('{url}', 'ev')")
        # A statement sent over the network cannot make the host follow (or reach) anything.
        import adbc_driver_flightsql.dbapi as flightsql
        with flightsql.connect(f"grpc://{addr}", db_kwargs={
                "adbc.flight.sql.authorization_header": f"Bearer {anything}"}) as conn, conn.cursor() as cur:
            with pytest.raises(Exception) as e:
                cur.execute(f"SELECT * FROM arrowport_follow('grpc://{addr}', 'ev')")
                cur.fetchall()
            assert "arrowport_follow cannot be called over the network" in str(e.value)
        host.sql("SELECT arrowport_stop()")
    finally:
        other.close()
        host.close()


def test_the_readmes_following_examples_run(tmp_path):
    import os
    import re
    readme = open(os.path.join(os.path.dirname(__file__), "..", "..", "README.md")).read()
    section = readme[readme.index("### Following a stream"):readme.index("### Streams that merge on a key")]
    setup, pull_loop = re.findall(r"```sql\n(.*?)```", section, re.S)
    follow_py = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    host = hosts.start("py20", str(tmp_path / "central.duckdb"))
    other = hosts.start("cli", str(tmp_path / "edge.duckdb"))
    try:
        host.sql(hosts.load_sql())
        addr = host.sql("SELECT address FROM arrowport_listen('127.0.0.1:0', auth := 'token')")[0][0]
        host.sql("CALL arrowport_create_stream('events')")
        token = None
        def statements(sql):
            return [s for s in sql.split(";") if s.strip() and not all(
                line.strip().startswith("--") for line in s.strip().splitlines())]

        for statement in statements(setup):
            rows = host.sql(statement)
            if "arrowport_create_token" in statement:
                token = rows[0][1]
        writer = host.sql("SELECT token FROM arrowport_create_token('producer', streams := ['events'])")[0][0]
        for i in range(3):
            flight_put(addr, "events", pa.table({"id": pa.array([i * 2, i * 2 + 1], pa.int64())}), token=writer)
        # The Flight example, as written, with the read token on its call and a handler that stops at the 6th row.
        got = []

        class Enough(Exception):
            pass

        def handle(data):
            got.extend(data.column("id").to_pylist())
            if len(got) >= 6:
                raise Enough

        code = follow_py.replace("127.0.0.1:8815", addr).replace(
            "client.do_get(fl.Ticket(json.dumps({\"follow\": \"events\", \"after\": \"start\"})))",
            "client.do_get(fl.Ticket(json.dumps({\"follow\": \"events\", \"after\": \"start\"})), "
            f"options=fl.FlightCallOptions(headers=[(b'authorization', b'Bearer {token}')]))")
        assert "Bearer" in code, "the example's call changed; update this test"
        with pytest.raises(Enough):
            exec(code, {"handle": handle})
        assert got == [0, 1, 2, 3, 4, 5]
        # The pull loop, as written, from another DuckDB, twice: the second pull takes only what is new.
        other.sql(hosts.load_sql())
        other.sql("CREATE TABLE local_events (id BIGINT)")
        other.sql("CREATE TABLE cursor AS SELECT 0::BIGINT AS c")
        loop = pull_loop.replace("grpc://central:8815", f"grpc://{addr}").replace("token := '...'", f"token := '{token}'")
        for round_ in range(2):
            for statement in statements(loop):
                other.sql(statement)
            if round_ == 0:
                flight_put(addr, "events", pa.table({"id": pa.array([6], pa.int64())}), token=writer)
        assert other.sql("SELECT list(id ORDER BY id), (SELECT c FROM cursor) FROM local_events") == [([0, 1, 2, 3, 4, 5, 6], 7)]
        host.sql("SELECT arrowport_stop()")
    finally:
        other.close()
        host.close()


def test_followers_reads_leave_network_statements_as_they_were(tmp_path):
    """Followers read losslessly (a UUID is Arrow's uuid extension type) on the statement connections that also
    run statements sent over the network, which keep DuckDB's default conversion (a UUID is text)."""
    import uuid

    import adbc_driver_flightsql.dbapi as flightsql
    host = hosts.start("py20", str(tmp_path / "u.duckdb"))
    try:
        host.sql(hosts.load_sql())
        addr = host.sql("SELECT address FROM arrowport_listen('127.0.0.1:0', sql := 'read_only')")[0][0]
        host.sql("CREATE TABLE ev (id BIGINT, u UUID)")
        host.sql("CALL arrowport_create_stream('ev', follow := true)")
        host.sql("INSERT INTO ev (id, u) VALUES (100, '00000000-0000-0000-0000-000000000000')")
        # Before the stream's first commit its table has no positions: a follower that will not wait is told so.
        with pytest.raises(pa.ArrowKeyError, match='stream "ev" has not landed anything since it became followable'):
            client, reader = fl.connect(f"grpc://{addr}"), None
            client.do_get(fl.Ticket(json.dumps({"follow": "ev", "after": 0, "wait": 0.2}))).read_all()
        text = "5f3c2b1a-0000-4000-8000-00000000000%d"
        rest(addr, "ev", pa.table({"id": pa.array([-1], pa.int64()), "u": pa.array([None], pa.uuid())}))
        # A live follower: past its start, each of its reads is a follower's read on the statement pool.
        client, reader = follow(addr, "ev", 0)
        assert reader.read_chunk().data.column("id").to_pylist() == [-1]
        with flightsql.connect(f"grpc://{addr}") as conn, conn.cursor() as cur:
            for round_ in range(4):
                rest(addr, "ev", pa.table({"id": pa.array([round_], pa.int64()),
                                           "u": pa.array([uuid.UUID(text % round_).bytes], pa.uuid())}))
                chunk = reader.read_chunk()
                assert chunk.data.schema.field("u").type.extension_name == "arrow.uuid"
                assert chunk.data.column("id").to_pylist() == [round_]
                # Statements then run on the same connections.
                for _ in range(8):
                    cur.execute("SELECT u FROM ev WHERE id = ?", parameters=[round_])
                    table = cur.fetch_arrow_table()
                    assert table.schema.field("u").type == pa.string(), table.schema
                    assert table.column("u").to_pylist() == [text % round_]
        client.close()
        host.sql("SELECT arrowport_stop()")
    finally:
        host.close()


def test_a_slow_follower_does_not_grow_the_host_and_still_gets_every_row_once(tmp_path):
    """A follower that reads one batch of a large history and then takes nothing for longer than the host waits
    (5 s): the host gives its read up instead of buffering for it (its memory stays within the budget's reach),
    producers keep landing meanwhile, and when the follower reads again it gets every row once, in order."""
    host = hosts.start("py20", str(tmp_path / "s.duckdb"))
    try:
        host.sql(hosts.load_sql())
        addr = host.sql("SELECT address FROM arrowport_listen('127.0.0.1:0', memory_budget := 32 * 1024 * 1024)")[0][0]
        host.sql("CALL arrowport_create_stream('ev', follow := true)")
        pad = "x" * 200
        total = 0
        for i in range(20):
            n = 50_000
            t = pa.table({"id": pa.array(range(total, total + n), pa.int64()), "pad": pa.array([pad] * n)})
            assert flight_put(addr, "ev", t)["rows"] == n
            total += n
        host.sql("CHECKPOINT")
        pid = host.proc.pid
        client, reader = follow(addr, "ev", 0)
        first = reader.read_chunk().data.column("id").to_pylist()
        with hosts.PeakRss(pid) as rss:
            # Producers land while the follower takes nothing for longer than the host waits for it.
            deadline = time.time() + 7
            while time.time() < deadline:
                n = 1000
                t = pa.table({"id": pa.array(range(total, total + n), pa.int64()), "pad": pa.array([pad] * n)})
                assert flight_put(addr, "ev", t)["rows"] == n
                total += n
                time.sleep(0.05)
            budget = httpx.get(f"http://{addr}/status.json").json()["memory_budget"]
        # The whole history is about 220 MB as Arrow; what the host holds for the follower is a batch or two.
        assert rss.growth_mib() < 100, rss.mib()
        assert budget["used_bytes"] <= budget["limit_bytes"], budget
        ids = list(first)
        while len(ids) < total:
            ids.extend(reader.read_chunk().data.column("id").to_pylist())
        client.close()
        assert ids == list(range(total)), "a row missing, repeated or out of order"
        host.sql("SELECT arrowport_stop()")
    finally:
        host.close()
