"""Clients that press on the port without a bug to exploit: connections that never speak, claims they never send,
schemas built to be expensive, and statements that nest deep or run long. The port keeps answering (`/health`
first), the host's own SQL keeps working, and what a client holds is bounded."""
import os
import socket
import struct
import threading
import time
import urllib.parse

import adbc_driver_manager
import httpx
import pyarrow as pa
import pyarrow.flight as fl
import pytest

import hosts
from clients import ipc_bytes
from test_flightsql import make, query  # noqa: F401  (make: fixture)
from test_security import Host, post, refused_json
from testdata import events

ARROW = "application/vnd.apache.arrow.stream"


@pytest.fixture
def made(tmp_path):
    out = []
    yield out
    for h in out:
        assert h.close() == 0, h.host.stderr()[-2000:]


def start(made, tmp_path, listen_sql, nofile=None):
    h = Host.__new__(Host)
    h.host = hosts.PythonHost("py20", str(tmp_path / "p.duckdb"), nofile=nofile)
    h.host.sql(hosts.load_sql())
    h.setup, h.listen_sql = [], listen_sql
    made.append(h)
    return h.listen()


def health(port, timeout=5):
    return httpx.get(f"http://127.0.0.1:{port}/health", timeout=timeout).status_code


def silent(port, n):
    conns = []
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        conns.append(s)
    return conns


def closed_by_peer(s, within):
    s.settimeout(within)
    try:
        return s.recv(1) == b""
    except (ConnectionResetError, BrokenPipeError):
        return True
    except socket.timeout:
        return False


def test_connections_that_never_speak_cannot_starve_the_port_or_the_host(made, tmp_path):
    # The host as a service manager may start it: 1,024 descriptors, soft and hard.
    h = start(made, tmp_path, "FROM arrowport_listen('127.0.0.1:0')", nofile=1024)
    crowd = silent(h.port, 1100)
    try:
        # The port answers past the crowd, and so does ingest.
        assert health(h.port) == 200
        assert post("127.0.0.1", h.port, "fine", events(3)).status_code == 200
        # The host's own work still opens files.
        out = str(tmp_path / "own.csv")
        h.sql(f"COPY (SELECT 42 AS x) TO '{out}'")
        assert h.sql(f"SELECT x FROM read_csv('{out}')") == [(42,)]
        assert h.count("fine") == 3
        # The oldest silent ones were closed to make room.
        assert sum(closed_by_peer(s, 0.01) for s in crowd[:50]) == 50
    finally:
        for s in crowd:
            s.close()


def test_a_silent_connection_is_closed_and_a_full_port_says_so(made, tmp_path):
    h = start(made, tmp_path, "FROM arrowport_listen('127.0.0.1:0', stall_timeout := 2, max_connections := 2)")
    s = socket.create_connection(("127.0.0.1", h.port))
    started = time.monotonic()
    assert closed_by_peer(s, 10), "a connection that sent nothing is closed"
    assert 1.5 < time.monotonic() - started < 8
    # Two connections with a request in progress (headers sent, body still coming) fill the port: a third is
    # answered 503 with the reason.
    busy = []
    for _ in range(2):
        b = socket.create_connection(("127.0.0.1", h.port))
        b.sendall(b"POST /streams/slow HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: " + ARROW.encode()
                  + b"\r\nTransfer-Encoding: chunked\r\n\r\n")
        busy.append(b)
    time.sleep(0.3)
    r = httpx.get(f"http://127.0.0.1:{h.port}/health", timeout=5)
    msg = refused_json(r, 503, "busy")
    assert "too many connections" in msg and "max_connections" in msg, msg
    for b in busy:
        b.close()
    time.sleep(0.3)
    assert health(h.port) == 200


def claim(port, stream, claimed):
    """A REST request that sends a schema and the header of a batch claiming `claimed` body bytes, then nothing."""
    table = events(3)
    data = ipc_bytes(table)
    schema_end = _first_message_end(data)
    header = _batch_header(data, schema_end)
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(f"POST /streams/{stream} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {ARROW}\r\n"
              f"Content-Length: {len(data) + claimed}\r\n\r\n".encode())
    s.sendall(data[:schema_end] + header(claimed))
    return s


def _first_message_end(data):
    assert struct.unpack("<I", data[:4])[0] == 0xFFFFFFFF
    n = struct.unpack("<I", data[4:8])[0]
    return 8 + n


def _batch_header(data, at):
    """A function making the batch message's prefix and metadata with its bodyLength replaced."""
    n = struct.unpack("<I", data[at + 4:at + 8])[0]
    meta = data[at + 8:at + 8 + n]
    honest = pa.ipc.read_message(pa.py_buffer(data[at:])).body.size

    def make(claimed):
        packed = struct.pack("<q", honest)
        assert meta.count(packed) == 1
        return data[at:at + 8] + meta.replace(packed, struct.pack("<q", claimed))
    return make


def test_claims_that_are_never_sent_do_not_hold_the_budget(made, tmp_path):
    h = start(made, tmp_path, "FROM arrowport_listen('127.0.0.1:0', memory_budget := 64 * 1024 * 1024)")
    claimers = [claim(h.port, "claims", 60 << 20) for _ in range(15)]
    try:
        time.sleep(0.5)
        for _ in range(5):
            r = post("127.0.0.1", h.port, "fine", events(3))
            assert r.status_code == 200, r.text
    finally:
        for c in claimers:
            c.close()
    assert h.count("fine") == 15 and h.count("claims") == 0


def wide(n):
    return pa.table({f"c{i}": pa.array([i], pa.int32()) for i in range(n)})


def test_schemas_are_bounded_in_fields_before_they_are_taken_in(made, tmp_path):
    h = start(made, tmp_path, "FROM arrowport_listen('127.0.0.1:0', max_columns := 100)")
    client = fl.FlightClient(f"grpc://127.0.0.1:{h.port}")
    writer, reader = client.do_put(fl.FlightDescriptor.for_path("wide"), wide(100).schema)
    writer.write_table(wide(100))
    writer.close()
    assert h.count("wide") == 1
    with pytest.raises((fl.FlightError, pa.ArrowInvalid)) as e:
        writer, reader = client.do_put(fl.FlightDescriptor.for_path("wider"), wide(101).schema)
        writer.write_table(wide(101))
        writer.close()
    assert "more than 100 fields" in str(e.value) and "max_columns" in str(e.value), e.value
    nested = pa.table({"s": pa.array([{f"f{i}": i for i in range(120)}])})
    msg = refused_json(post("127.0.0.1", h.port, "nested", nested), 413, "too_large")
    assert "nested fields count" in msg, msg
    # 20,000 fields are refused at once, not taken in.
    started = time.monotonic()
    msg = refused_json(post("127.0.0.1", h.port, "huge", wide(20_000)), 413, "too_large")
    assert time.monotonic() - started < 20 and "max_columns" in msg
    assert h.count("wider") == 0 and h.count("nested") == 0 and h.count("huge") == 0
    assert post("127.0.0.1", h.port, "fine", events(3)).status_code == 200


def nested_expression(depth):
    return "SELECT " + "(" * depth + "1" + " + 1)" * depth


def nested_type(depth):
    return "SELECT NULL::" + "STRUCT(a " * depth + "INTEGER" + ")" * depth


def test_statements_nested_to_duckdbs_limit_do_not_kill_the_host(make):  # noqa: F811
    # Statements run on threads of their own with 16 MiB stacks (the ingest writers have 2 MiB).
    h = make(", sql := 'read_only'")
    conn = h.connect()
    nested_calls = "SELECT " + "abs(" * 990 + "1" + ")" * 990
    nested_queries = "SELECT " + "(SELECT " * 400 + "1" + ")" * 400
    for sql in (nested_expression(490), nested_calls, nested_queries, nested_type(300)):
        try:
            query(conn, sql)
        except pa.ArrowInvalid as e:
            # The host answered; pyarrow itself refuses to import a schema nested this deep.
            assert "Recursion level" in str(e), e
        except adbc_driver_manager.Error as e:
            assert "depth" in str(e).lower() or "stack" in str(e).lower() or "recursion" in str(e).lower(), str(e)[:300]
    assert query(conn, "SELECT 41 + 1 AS x").to_pylist() == [{"x": 42}]
    assert h.sql("SELECT 1") == [(1,)]


def test_statements_are_timed_out_and_bounded_in_text(make):  # noqa: F811
    h = make(", sql := 'read_only', statement_timeout := 1, max_sql_bytes := 4096")
    conn = h.connect()
    started = time.monotonic()
    with pytest.raises(adbc_driver_manager.Error) as e:
        query(conn, "SELECT count(*) FROM range(100000000000) a")
    assert "the statement ran longer than statement_timeout (1s) and was interrupted" in str(e.value), e.value
    assert time.monotonic() - started < 30
    with pytest.raises(adbc_driver_manager.Error) as e:
        query(conn, "SELECT '" + "x" * 5000 + "'")
    assert "max_sql_bytes" in str(e.value), e.value
    assert query(conn, "SELECT 42 AS x").to_pylist() == [{"x": 42}]


@pytest.mark.parametrize("kind", ["cli", "py20", "py15"])
def test_the_operator_stops_and_revokes_while_a_client_statement_cannot_be_interrupted(make, tmp_path, kind):  # noqa: F811
    h = make(", sql := 'read_only', auth := 'token'", kind=kind)
    token = h.sql("SELECT token FROM arrowport_create_token('reader')")[0][0]
    h.sql("SELECT token FROM arrowport_create_token('other')")
    fifo = str(tmp_path / "fifo.csv")
    os.mkfifo(fifo)
    conn = h.connect(token)
    stuck = {}

    def read_fifo():
        try:
            stuck["rows"] = query(conn, f"SELECT * FROM read_csv('{fifo}')").num_rows
        except Exception as e:  # noqa: BLE001
            stuck["error"] = str(e)

    # The stop's bound on a statement it cannot interrupt is arrowport's own (the same on every host, and its
    # wait the slowest part of the suite): one host kind holds such a statement, the others stop without one.
    t = threading.Thread(target=read_fifo if kind == "py20" else (lambda: None), daemon=True)
    t.start()
    if kind == "py20":
        time.sleep(1.5)  # the statement is blocked opening the FIFO, where DuckDB cannot interrupt it
    try:
        started = time.monotonic()
        assert [r[0] for r in h.sql("SELECT name FROM arrowport_revoke_token('other')")] == ["other"]
        assert [r[0] for r in h.sql("SELECT name FROM arrowport_tokens()")] == ["reader"]
        assert h.sql("SELECT arrowport_stop()") == [(1,)]
        assert time.monotonic() - started < 30
        assert h.sql("FROM arrowport_status()") == []
    finally:
        # Let the blocked open return, so the statement's thread ends.
        if kind == "py20":
            with open(fifo, "w") as w:
                w.write("a\n1\n")
        t.join(30)
    # The administrative functions stay refused to a client statement.
    addr = h.sql("SELECT address FROM arrowport_listen('127.0.0.1:0', sql := 'read_write')")[0][0]
    h.addr = addr
    anon = h.connect()
    # (Built at run time, past the statement's text, so that the bind-time refusal is what answers.)
    for sql in ("FROM query('SELECT arrowport' || '_stop()')", "FROM arrowport_create_token('mine')",
                "FROM query('SELECT arrowport' || '_listen(''127.0.0.1:0'')')", "FROM query('FROM arrowport' || '_revoke_token(''reader'')')"):
        with pytest.raises(adbc_driver_manager.Error) as e:
            query(anon, sql)
        assert "cannot be called over the network" in str(e.value), (sql, str(e.value)[:300])
    assert [r[0] for r in h.sql("SELECT name FROM arrowport_tokens()")] == ["reader"]
    # Nor arrowport's own state: its listings answer the host's session only.
    for sql in ("FROM arrowport_streams()", "FROM arrowport_metrics()", "FROM arrowport_status()"):
        with pytest.raises(adbc_driver_manager.Error) as e:
            query(anon, sql)
        assert "cannot be called over the network" in str(e.value), (sql, str(e.value)[:300])
    # No object a client makes can run them later in the host's session, or shadow them: a view is bound as it
    # is made (on the client's connection: refused), and macros, bound only when called, are not accepted.
    with pytest.raises(adbc_driver_manager.Error) as e:
        query(anon, "CREATE VIEW trap AS FROM query('FROM arrowport' || '_create_token(''evil'', secret := ''x'')')")
    assert "cannot be called over the network" in str(e.value), str(e.value)[:300]
    for sql in ("CREATE MACRO arrowport_revoke_token(x) AS TABLE SELECT 'reader' AS name",
                "CREATE TEMP MACRO sha256(x) AS 'same'", "CREATE OR REPLACE FUNCTION f() AS 1"):
        with pytest.raises(adbc_driver_manager.Error) as e:
            query(anon, sql)
        assert "CREATE MACRO / CREATE FUNCTION is not accepted over the network" in str(e.value), (sql, str(e.value)[:300])
    assert h.sql("SELECT count(*) FROM duckdb_views() WHERE view_name = 'trap'") == [(0,)]
    assert h.sql("SELECT count(*) FROM duckdb_functions() WHERE function_type = 'macro' AND function_name IN "
                 "('arrowport_revoke_token', 'sha256', 'f')") == [(0,)]
    assert [r[0] for r in h.sql("SELECT name FROM arrowport_revoke_token('reader')")] == ["reader"]


def test_a_read_only_listener_lets_nothing_act_before_it_is_admitted(make, tmp_path):  # noqa: F811
    h = make(", sql := 'read_only'")
    conn = h.connect()
    loaded = h.sql("SELECT extension_name FROM duckdb_extensions() WHERE loaded ORDER BY 1")
    made = tmp_path / "made_at_bind"
    for sql, text in [
        ("FROM checkpoint()", "checkpoint() changes the database"),
        ("SELECT * FROM force_checkpoint()", "force_checkpoint() changes the database"),
        ("FROM query('FROM checkpoint()')", "checkpoint() changes the database"),
        ("SELECT nextval('s')", "nextval() changes the database"),
        ("SELECT st_point(1, 2)", "st_point() is not a function this host has"),
        ("FROM query('SELECT ' || 'st_point(1, 2)')", "takes a constant string"),
        (f"COPY (SELECT 1 AS x) TO '{made}' (FORMAT csv, PER_THREAD_OUTPUT true)", "runs only statements that read"),
        ("CREATE TABLE x (a INT)", "runs only statements that read"),
    ]:
        with pytest.raises(adbc_driver_manager.Error) as e:
            query(conn, sql)
        assert text in str(e.value), (sql, str(e.value)[:300])
    assert not made.exists()
    assert h.sql("SELECT extension_name FROM duckdb_extensions() WHERE loaded ORDER BY 1") == loaded
    table = query(conn, "SELECT abs(-1) + 1 AS x, count(*) AS n FROM query('FROM range(3)')")
    assert table.to_pylist() == [{"x": 2, "n": 3}]


def test_a_read_write_client_loads_no_extension_and_leaves_no_temporary_object(make):  # noqa: F811
    settings = "SELECT current_setting('autoload_known_extensions'), current_setting('autoinstall_known_extensions')"
    h = make(", sql := 'read_write'")
    installed = h.sql("SELECT extension_name FROM duckdb_extensions() WHERE installed OR loaded ORDER BY 1")
    assert h.sql(settings) == [(False, False)]  # held off while a listener accepts SQL
    conn = h.connect()
    for sql, text in [
        ("SELECT st_point(1, 2)", 'Scalar Function with name "st_point" is not in the catalog'),
        ("CREATE TABLE p AS SELECT st_point(1, 2) AS g", 'Scalar Function with name "st_point" is not in the catalog'),
        ("SELECT * FROM 'https://example.invalid/x.parquet'", "requires the extension httpfs to be loaded"),
        ("CREATE TEMP TABLE tt AS SELECT 1 AS a", "temporary tables, views, sequences and types are not accepted"),
        ("CREATE TEMPORARY VIEW tv AS SELECT 1 AS a", "temporary tables, views, sequences and types are not accepted"),
        ("CREATE TEMP SEQUENCE ts", "temporary tables, views, sequences and types are not accepted"),
        ("CREATE TEMP TYPE mood AS ENUM ('a')", "temporary tables, views, sequences and types are not accepted"),
    ]:
        with pytest.raises(adbc_driver_manager.Error) as e:
            query(conn, sql)
        assert text in str(e.value), (sql, str(e.value)[:300])
    # Each of the pool's connections was tried: nothing temporary is left on any of them.
    for _ in range(8):
        with pytest.raises(adbc_driver_manager.Error, match="Table with name tt does not exist"):
            query(conn, "SELECT * FROM tt")
    query(conn, "CREATE TABLE kept AS SELECT 1 AS a")
    query(conn, "INSERT INTO kept VALUES (2)")
    assert query(conn, "SELECT a FROM kept ORDER BY a").to_pylist() == [{"a": 1}, {"a": 2}]
    conn.close()
    assert h.sql("SELECT extension_name FROM duckdb_extensions() WHERE installed OR loaded ORDER BY 1") == installed
    assert h.sql("SELECT arrowport_stop()") == [(1,)]
    assert h.sql(settings) == [(True, True)]  # put back when the last listener stops


def grpc_partial_put(port, claimed, sent):
    """A raw HTTP/2 DoPut whose one message claims `claimed` bytes and sends `sent` of them, then nothing."""
    import h2.config
    import h2.connection
    import h2.settings
    s = socket.create_connection(("127.0.0.1", port))
    s.settimeout(10)
    c = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    c.initiate_connection()
    sid = c.get_next_available_stream_id()
    c.send_headers(sid, [(":method", "POST"), (":scheme", "http"), (":authority", f"127.0.0.1:{port}"),
                         (":path", "/arrow.flight.protocol.FlightService/DoPut"),
                         ("content-type", "application/grpc"), ("te", "trailers")])
    s.sendall(c.data_to_send())
    payload, at, answer = b"\0" + struct.pack(">I", claimed) + b"\x0a" * sent, 0, {}
    while at < len(payload) and not answer:
        room = min(c.local_flow_control_window(sid), c.max_outbound_frame_size)
        if room == 0:
            for event in c.receive_data(s.recv(1 << 16)):
                answer.update(dict(getattr(event, "headers", None) or []))
            s.sendall(c.data_to_send())
            continue
        c.send_data(sid, payload[at:at + room])
        at += room
        s.sendall(c.data_to_send())
    return s, c, sid, answer


def grpc_answer(s, c, answer, within=10):
    deadline = time.monotonic() + within
    while b"grpc-status" not in answer and time.monotonic() < deadline:
        for event in c.receive_data(s.recv(1 << 16)):
            answer.update(dict(getattr(event, "headers", None) or []))
    return answer


def budget_used(port):
    text = httpx.get(f"http://127.0.0.1:{port}/metrics").text
    return {line.split()[0]: int(line.split()[1]) for line in text.splitlines() if line.startswith("arrowport_memory_budget")}


def test_a_flight_message_still_arriving_is_charged_to_the_budget_as_its_bytes_arrive(made, tmp_path):
    h = start(made, tmp_path, "FROM arrowport_listen('127.0.0.1:0', memory_budget := 64 * 1024 * 1024)")
    assert budget_used(h.port) == {"arrowport_memory_budget_bytes": 64 << 20, "arrowport_memory_budget_used_bytes": 0}
    # Two calls each send 20 MiB of a message claiming 60 MiB, then stall: what they sent is held, not what
    # they claim.
    stalled = [grpc_partial_put(h.port, 60 << 20, 20 << 20) for _ in range(2)]
    deadline = time.monotonic() + 10
    while budget_used(h.port)["arrowport_memory_budget_used_bytes"] < 2 * (20 << 20) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert budget_used(h.port)["arrowport_memory_budget_used_bytes"] == 2 * ((20 << 20) + 5)
    # A third that sends more than is left is refused with the budget's reason, and holds nothing after.
    s, c, _, answer = grpc_partial_put(h.port, 60 << 20, 30 << 20)
    answer = grpc_answer(s, c, answer)
    assert answer.get(b"grpc-status") == b"8", answer
    assert answer.get(b"arrowport-error-code") == b"busy", answer  # the code clients decide retries on
    message = urllib.parse.unquote(answer.get(b"grpc-message", b"").decode())
    assert "the host's memory budget (67108864 bytes, memory_budget) has no room now" in message, message
    s.close()
    # A whole request still lands beside the stalled ones (3 rows need far less than what is left).
    client = fl.FlightClient(f"grpc://127.0.0.1:{h.port}")
    writer, reader = client.do_put(fl.FlightDescriptor.for_path("fine"), events(3).schema)
    writer.write_table(events(3))
    writer.done_writing()
    reader.read()
    writer.close()
    assert h.count("fine") == 3
    for s, *_ in stalled:
        s.close()
    deadline = time.monotonic() + 10
    while budget_used(h.port)["arrowport_memory_budget_used_bytes"] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert budget_used(h.port)["arrowport_memory_budget_used_bytes"] == 0


def test_a_statement_that_grows_the_host_past_its_memory_limit_is_interrupted(make):  # noqa: F811
    """DuckDB does not count the strings a vector holds against memory_limit: each chunk of this query holds
    about 600 MB, and it would run through ten of them. The guard interrupts it within the chunk where the host
    passes sql_memory_limit; a statement that does not grow the host runs after it."""
    h = make(f", sql := 'read_only', sql_memory_limit := {384 << 20}")
    conn = h.connect()
    with pytest.raises(adbc_driver_manager.Error) as e:
        query(conn, "SELECT sum(length(repeat('x', 300000 + (range % 2)::INT))) AS n FROM range(20000)")
    assert "the statement was interrupted: while it ran the host's process grew to" in str(e.value), e.value
    assert f"over its memory limit of {384 << 20} bytes (sql_memory_limit)" in str(e.value), e.value
    assert query(conn, "SELECT sum(range) AS s FROM range(1000)").to_pylist() == [{"s": 499500}]
    with pytest.raises(Exception, match="share one memory guard"):
        h.sql(f"FROM arrowport_listen('127.0.0.1:0', sql_memory_limit := {1 << 30})")
