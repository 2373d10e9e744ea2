"""Hostile clients: requests built to crash, freeze or reach past their stream are refused with a clear status,
nothing of them lands, and the host goes on serving. Each test ends by landing a normal request."""
import base64
import json
import socket
import threading
import time

import adbc_driver_manager
import grpc
import httpx
import pyarrow as pa
import pyarrow.flight as fl
import pytest

import flightraw
import hosts
from test_flightsql import make, query  # noqa: F401  (make: fixture)
from test_security import bearer, make_host, post, refused_json  # noqa: F401  (make_host: fixture)
from testdata import events

ARROW = "application/vnd.apache.arrow.stream"
TERABYTE = 1 << 40


def bomb(codec):
    """An IPC stream whose one compressed buffer claims 2^40 bytes uncompressed (its 8-byte prefix rewritten)."""
    table = pa.table({"id": pa.array(range(1237), pa.int64())})
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema, options=pa.ipc.IpcWriteOptions(compression=codec)) as w:
        w.write_table(table)
    data = sink.getvalue().to_pybytes()
    honest = (1237 * 8).to_bytes(8, "little")
    assert data.count(honest) == 1, "the uncompressed-length prefix of the data buffer"
    return data.replace(honest, TERABYTE.to_bytes(8, "little"))


def flight_messages(ipc, stream):
    """The IPC stream's messages as raw FlightData, the first with a PATH descriptor."""
    pairs = flightraw.stream_messages(ipc)
    return [flightraw.flight_data(flightraw.descriptor(1, path=[stream]) if i == 0 else None, header=h, body=b)
            for i, (h, b) in enumerate(pairs)]


def test_a_compressed_buffer_claiming_a_terabyte_is_refused_before_any_allocation(make_host):
    h = make_host("FROM arrowport_listen('127.0.0.1:0')").listen()
    for codec in ("lz4", "zstd"):
        data = bomb(codec)
        r = httpx.post(f"http://127.0.0.1:{h.port}/streams/bomb", content=data, headers={"Content-Type": ARROW}, timeout=30)
        msg = refused_json(r, 413, "too_large")
        assert f"claims {TERABYTE} bytes once decompressed" in msg and "max_message_bytes" in msg, msg
        with pytest.raises(grpc.RpcError) as e:
            flightraw.do_put(f"127.0.0.1:{h.port}", flight_messages(data, "bomb"))
        assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, e.value
        assert f"claims {TERABYTE} bytes" in e.value.details()
    assert h.count("bomb") == 0
    assert post("127.0.0.1", h.port, "fine", events(5)).status_code == 200
    assert h.count("fine") == 5


def test_a_web_page_cannot_write_through_a_browser(make_host):
    h = make_host(
        "FROM arrowport_listen('127.0.0.1:0', allowed_hosts := ['Arrowport.test'], allowed_origins := ['http://dash.test'])"
    ).listen()
    landed = 0
    # DNS rebinding: a page's own name pointing at 127.0.0.1 arrives as its Host.
    msg = refused_json(post("127.0.0.1", h.port, "events", events(3), headers={"Host": "evil.example:8815"}), 403, "permission_denied")
    assert '"evil.example"' in msg and "allowed_hosts" in msg, msg
    for host in ("arrowport.test:1234", "localhost", f"127.0.0.1:{h.port}"):
        assert post("127.0.0.1", h.port, "events", events(3), headers={"Host": host}).status_code == 200, host
        landed += 3
    # A cross-site request carries its page's Origin; the JSON endpoint without a Content-Type is such a request.
    msg = refused_json(post("127.0.0.1", h.port, "events", events(3), headers={"Origin": "http://evil.example"}), 403, "permission_denied")
    assert '"http://evil.example"' in msg and "allowed_origins" in msg, msg
    r = httpx.post(f"http://127.0.0.1:{h.port}/stream/events", content=b'{"config": {}}', headers={"Origin": "null"}, timeout=10)
    refused_json(r, 403, "permission_denied")
    assert post("127.0.0.1", h.port, "events", events(3), headers={"Origin": "http://dash.test/"}).status_code == 200
    landed += 3
    # gRPC: the :authority is checked like Host.
    messages = flight_messages(_ipc(events(2)), "events")
    with pytest.raises(grpc.RpcError) as e:
        flightraw.do_put(f"127.0.0.1:{h.port}", messages, authority="evil.example")
    assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED and "evil.example" in e.value.details()
    flightraw.do_put(f"127.0.0.1:{h.port}", messages, authority="localhost")
    landed += 2
    # A token proves who a client is; then the name it used does not matter.
    token = h.token("etl")
    assert post("127.0.0.1", h.port, "events", events(3), headers={"Host": "evil.example", **bearer(token)}).status_code == 200
    landed += 3
    # Liveness stays answerable by any name (load balancers).
    assert httpx.get(f"http://127.0.0.1:{h.port}/health", headers={"Host": "lb.internal"}, timeout=10).status_code == 200
    assert h.count("events") == landed


def _ipc(table, chunk=None):
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as w:
        w.write_table(table, max_chunksize=chunk)
    return sink.getvalue().to_pybytes()


def test_health_answers_without_a_writer_and_ready_counts_free_ones(make_host):
    h = make_host("FROM arrowport_listen('127.0.0.1:0')").listen()
    base = f"http://127.0.0.1:{h.port}"
    assert httpx.get(f"{base}/ready", timeout=10).json() == {"status": "ready", "writers_free": 7}
    # Seven large requests, each streaming into a writer and holding it while its client sends nothing more
    # (each into a table of its own: a first request into a missing table holds that table's create lock).
    big = events(200_000)
    held = []
    for i in range(7):
        c = fl.connect(f"grpc://127.0.0.1:{h.port}")
        w, r = c.do_put(fl.FlightDescriptor.for_path(f"held{i}"), big.schema)
        w.write_table(big)
        held.append((c, w, r))
    deadline = time.monotonic() + 30
    while httpx.get(f"{base}/ready", timeout=10).status_code == 200:
        assert time.monotonic() < deadline, "the writers were never all busy"
        time.sleep(0.1)
    r = httpx.get(f"{base}/ready", timeout=10)
    assert r.status_code == 503 and r.headers["retry-after"] == "1" and r.json()["error"]["code"] == "busy"
    health = httpx.get(f"{base}/health", timeout=10)
    assert health.status_code == 200 and health.json()["duckdb"].startswith("v")
    for c, w, r in held:
        w.done_writing()
        r.read()
        w.close()
        c.close()
    assert sum(h.count(f"held{i}") for i in range(7)) == 7 * 200_000
    assert httpx.get(f"{base}/ready", timeout=10).json()["writers_free"] == 7


def test_no_ingest_reaches_arrowports_own_state(make):  # noqa: F811
    h = make()
    h.sql("CALL arrowport_create_stream('s', target := 'main.t')")
    db = h.sql("SELECT current_database()")[0][0]
    conn = h.connect()
    for catalog, schema in [(db, "arrowport"), (None, "ARROWPORT"), ("arrowport_scratch", "main")]:
        with pytest.raises(adbc_driver_manager.Error) as e:
            with conn.cursor() as cur:
                cur.adbc_ingest("streams", events(3), mode="replace", catalog_name=catalog, db_schema_name=schema)
        assert "holds arrowport's own state" in str(e.value), (catalog, schema, e.value)
    # The original JSON endpoint's target_table, spelled with the host database's name.
    data = _ipc(events(2))
    payload = {"config": {"target_table": f"{db}.arrowport.tokens"},
               "batch": {"arrow_schema": base64.b64encode(events(2).schema.serialize()).decode(), "data": base64.b64encode(data).decode()}}
    r = httpx.post(f"http://{h.addr}/stream/x", json=payload, timeout=30)
    assert "holds arrowport's own state" in refused_json(r, 403, "permission_denied")
    assert h.sql("SELECT stream, target FROM arrowport_streams()") == [("s", "main.t")]
    assert h.sql("SELECT count(*) FROM duckdb_tables() WHERE schema_name = 'arrowport'") == [(0,)]
    with conn.cursor() as cur:
        assert cur.adbc_ingest("fine", events(3), mode="create") == 3


def test_no_sql_reaches_arrowports_metadata_by_any_route(make, tmp_path):  # noqa: F811
    """Mappings and tokens live in arrowport's own database, beside the host's: no connection to the host can
    name them, so a client's SQL cannot reach them, whatever indirection it tries."""
    h = make(", sql := 'read_write'", db="meta.duckdb")
    h.sql("CALL arrowport_create_stream('s', target := 'main.t')")
    h.sql("FROM arrowport_create_token('ops')")
    own_file = tmp_path / "meta.duckdb.arrowport"
    assert own_file.exists()
    conn = h.connect()
    for statement in ["FROM arrowport.tokens", "FROM query('FROM arrowport' || '.tokens')", "FROM query_table('arrowport.streams')",
                      "FROM query_table(['arrowport', 'tokens'])", "CREATE VIEW peek AS FROM query('FROM arrowport.tokens')"]:
        with pytest.raises(adbc_driver_manager.Error) as e:
            query(conn, statement)
        # Not found, or refused before DuckDB sees it (a statement naming arrowport's schema, where idempotency keys are).
        assert "Catalog Error" in str(e.value) or "does not exist" in str(e.value) or "may not name the schema" in str(e.value), (statement, str(e.value))
    assert query(conn, "SELECT count(*) AS n FROM duckdb_tables() WHERE table_name IN ('streams', 'tokens')").to_pylist() == [{"n": 0}]
    with pytest.raises(adbc_driver_manager.Error) as e:
        query(conn, f"ATTACH '{own_file}' AS own")
    assert "ATTACH statements are not accepted over the network" in str(e.value)
    assert [r[0] for r in h.sql("SELECT stream FROM arrowport_streams()")] == ["s"]
    assert [r[0] for r in h.sql("SELECT name FROM arrowport_tokens()")] == ["ops"]


def test_flight_sql_ingest_takes_only_defined_streams_when_the_listener_says_so(make):  # noqa: F811
    h = make(", unknown_streams := 'reject'")
    h.sql("CALL arrowport_create_stream('known', target := 'main.landing')")
    conn = h.connect()
    with pytest.raises(adbc_driver_manager.Error) as e:
        with conn.cursor() as cur:
            cur.adbc_ingest("unknown", events(3), mode="create_append")
    assert 'unknown stream "unknown"' in str(e.value)
    with pytest.raises(adbc_driver_manager.Error) as e:
        with conn.cursor() as cur:
            cur.adbc_ingest("known", events(3), mode="create_append", db_schema_name="other")
    assert "lands in main.landing" in str(e.value)
    with conn.cursor() as cur:
        assert cur.adbc_ingest("known", events(3), mode="create_append") == 3
    assert h.sql("SELECT count(*) FROM landing") == [(3,)]
    assert h.sql("SELECT count(*) FROM duckdb_tables() WHERE table_name IN ('known', 'unknown')") == [(0,)]


def long_query_in_background(conn):
    """Starts a read-only statement that would run for minutes; returns its thread and the errors it ends with."""
    errors = []

    def run():
        try:
            query(conn, "SELECT sum(range) FROM range(40000000000)")
        except Exception as e:  # the interrupted statement's error
            errors.append(str(e))

    t = threading.Thread(target=run)
    t.start()
    return t, errors


def host_call_during_a_long_query(h, conn, sql):
    """Runs `sql` in the host while a client's long read-only query runs; returns the call's rows, how long it
    took, and the errors the client's query ended with (it must have ended)."""
    t, errors = long_query_in_background(conn)
    time.sleep(1.5)
    started = time.monotonic()
    rows = h.sql(sql)
    elapsed = time.monotonic() - started
    t.join(60)
    assert not t.is_alive(), "the client's query did not end"
    return rows, elapsed, errors


def test_stop_interrupts_a_long_query_and_returns(make):  # noqa: F811
    h = make(", sql := 'read_only'")
    conn = h.connect()
    rows, elapsed, errors = host_call_during_a_long_query(h, conn, "SELECT arrowport_stop()")
    assert rows == [(1,)]
    assert errors, errors
    # Bounded: the statement was interrupted, not run to its end (which takes minutes here).
    assert elapsed < 20, elapsed
    assert h.sql("FROM arrowport_status()") == []
    addr = h.sql("SELECT address FROM arrowport_listen('127.0.0.1:0', sql := 'read_only')")[0][0]
    import adbc_driver_flightsql.dbapi as flight_sql
    with flight_sql.connect(f"grpc://{addr}") as again, again.cursor() as cur:
        cur.execute("SELECT 42 AS answer")
        assert cur.fetchall() == [(42,)]


def test_admin_functions_reached_through_query_indirection_are_refused_on_every_thread(make):  # noqa: F811
    """DuckDB runs a statement's scalar functions on its worker threads; the refusal must not depend on which."""
    h = make(", sql := 'read_write'")  # read_only refuses query() over built text before binding (test_pressure)
    conn = h.connect()
    indirect = [
        "FROM query('SELECT arrowport' || '_stop() AS s FROM range(3)')",
        "FROM query('SELECT arrowport' || '_listen(''127.0.0.1:0'') AS s')",
        "FROM query('FROM arrowport' || '_create_token(''sneaky'')')",
        "FROM query('FROM arrowport' || '_create_stream(''sneaky'')')",
    ]
    for attempt in range(3):
        for statement in indirect:
            with pytest.raises(adbc_driver_manager.Error) as e:
                query(conn, statement)
            assert "cannot be called over the network" in str(e.value), (attempt, statement, str(e.value))
    assert [r[0] for r in h.sql("SELECT protocol FROM arrowport_status() ORDER BY 1")] == ["flight", "rest"]
    assert h.sql("SELECT count(*) FROM arrowport_tokens()") == [(0,)]
    assert h.sql("SELECT count(*) FROM arrowport_streams() WHERE stream = 'sneaky'") == [(0,)]
    assert query(conn, "SELECT 42 AS answer").to_pylist() == [{"answer": 42}]


def test_the_hosts_own_admin_call_runs_at_once_beside_a_long_network_query(make):  # noqa: F811
    """The host's own session is told apart from a client's statement by its connection, so an administrative call
    neither waits for clients' statements nor interrupts them."""
    h = make(", sql := 'read_only', statement_timeout := 8")
    conn = h.connect()
    t, errors = long_query_in_background(conn)
    time.sleep(1.5)
    started = time.monotonic()
    assert h.sql("SELECT name FROM arrowport_create_token('ops')") == [("ops",)]
    assert time.monotonic() - started < 2
    assert t.is_alive() and not errors, errors
    # The client's statement ends at its statement_timeout instead.
    t.join(60)
    assert not t.is_alive()
    assert errors and "the statement ran longer than statement_timeout (8s) and was interrupted" in errors[0], errors
    assert query(conn, "SELECT 42 AS answer").to_pylist() == [{"answer": 42}]


def test_clients_that_send_nothing_are_cut_off(make_host):
    h = make_host("FROM arrowport_listen('127.0.0.1:0', stall_timeout := 1)").listen()

    def silent():
        time.sleep(6)
        yield from ()

    started = time.monotonic()
    with pytest.raises(grpc.RpcError) as e:
        flightraw.do_put(f"127.0.0.1:{h.port}", silent())
    assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED, e.value
    assert "sent nothing for 1s" in e.value.details()
    assert time.monotonic() - started < 6
    # The original JSON endpoint: headers and part of the body, then silence.
    with socket.create_connection(("127.0.0.1", h.port), timeout=10) as s:
        s.sendall(b"POST /stream/x HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"config\"")
        reply = s.recv(4096).decode()
    assert reply.startswith("HTTP/1.1 408") and "sent nothing for 1s" in reply, reply
    assert post("127.0.0.1", h.port, "fine", events(2)).status_code == 200


def test_a_column_name_with_a_nul_character_is_refused_on_a_fresh_host(make_host):
    """Found by the fuzzer: on a writer's first request, arrowport used to hand the client's schema to
    duckdb_arrow_scan, which does not catch DuckDB's exceptions; a NUL in a column name made DuckDB throw through
    Rust frames and the host aborted ("Rust cannot catch foreign exceptions")."""
    h = make_host("FROM arrowport_listen('127.0.0.1:0')").listen()
    data = _ipc(pa.table({"i": [1, 2], "a\x00b": ["x", "y"]}))
    msg = refused_json(httpx.post(f"http://127.0.0.1:{h.port}/streams/nul", content=data, headers={"Content-Type": ARROW}, timeout=30),
                       400, "invalid_input")
    assert "NUL character" in msg, msg
    with pytest.raises(grpc.RpcError) as e:
        flightraw.do_put(f"127.0.0.1:{h.port}", flight_messages(data, "nul"))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "NUL character" in e.value.details()
    assert h.count("nul") == 0
    assert post("127.0.0.1", h.port, "fine", events(5)).status_code == 200


@pytest.mark.parametrize("kind", ["py20", "py15", "cli"])
def test_no_other_connection_can_read_a_request_in_flight(make_host, kind):
    """A request's batches reach DuckDB through its writer's scan view in the catalog; a statement on any other
    connection that scans the view (the host's own session, or a client's SQL) is refused when DuckDB binds it,
    so it gets no row, and the request commits whole."""
    # read_write: read_only refuses query() over built text before binding (test_pressure); here the scan views'
    # own refusal answers.
    h = make_host("FROM arrowport_listen('127.0.0.1:0', sql := 'read_write')", kind=kind).listen()
    c = fl.connect(f"grpc://127.0.0.1:{h.port}")
    w, r = c.do_put(fl.FlightDescriptor.for_path("victim"), events(1).schema)
    w.write_table(events(300_000))  # over the group limit: it streams into a writer, which waits for more
    time.sleep(1)
    names = [v for (v,) in h.sql("SELECT view_name FROM duckdb_views() WHERE database_name = 'arrowport_scratch'")]
    assert names, "the writer made its scan view"
    refusal = "this is the scan of one of arrowport's writers; no other connection can read it"
    for v in names:
        with pytest.raises(hosts.HostError) as e:
            h.sql(f'SELECT count(*) FROM arrowport_scratch.main."{v}"')
        assert refusal in str(e.value), (v, str(e.value))
    import adbc_driver_flightsql.dbapi as flight_sql
    with flight_sql.connect(f"grpc://127.0.0.1:{h.port}") as conn:
        for v in names:  # a client's SQL, through query() past the literal-name check
            with pytest.raises(adbc_driver_manager.Error) as e:
                query(conn, f"FROM query('SELECT count(*) FROM arrowport' || '_scratch.main.\"{v}\"')")
            assert refusal in str(e.value), (v, str(e.value))
    for i in range(4):
        w.write_table(events(50_000, start=300_000 + i * 50_000))
    w.done_writing()
    ack = json.loads(r.read().to_pybytes())
    w.close()
    assert ack["rows"] == 500_000
    assert h.count("victim") == 500_000
    assert h.sql("SELECT count(DISTINCT id) FROM victim") == [(500_000,)]
    c.close()
    assert post("127.0.0.1", h.port, "fine", events(5)).status_code == 200


def test_the_memory_budget_bounds_what_64_large_requests_hold(make_host):
    """Seven large DoPuts hold every writer (their clients pause), then 57 large REST requests arrive and read
    ahead while they wait for one. With memory_budget := 128 MiB the host's RSS grows by less than the budget
    plus a stated overhead of 256 MiB (DuckDB's working memory for the seven inserts in progress, arrowport's
    32 MiB block cache, buffers): requests that do not fit are refused at once with 503 and Retry-After. Without
    a budget this load grows the host by ~600 MiB (measured: 603). Every acknowledged row lands, once."""
    budget = 128
    h = make_host(f"FROM arrowport_listen('127.0.0.1:0', memory_budget := {budget << 20})").listen()
    pid = h.host.proc.pid
    base_url = f"http://127.0.0.1:{h.port}"
    assert post("127.0.0.1", h.port, "warm", events(10)).status_code == 200
    with hosts.PeakRss(pid, every=0.01) as rss:
        held, big = [], events(200_000)
        for i in range(7):
            c = fl.connect(f"grpc://127.0.0.1:{h.port}")
            w, r = c.do_put(fl.FlightDescriptor.for_path(f"hold{i}"), big.schema)
            w.write_table(big)
            held.append((c, w, r))
        time.sleep(1)
        body = _ipc(events(400_000), 100_000)
        outcomes = []

        def client(i):
            r = httpx.post(f"{base_url}/streams/t{i}", content=body, headers={"Content-Type": ARROW}, timeout=120)
            outcomes.append((i, r.status_code, r.headers.get("retry-after"), r.json()))

        clients = [threading.Thread(target=client, args=(i,)) for i in range(57)]
        for t in clients:
            t.start()
        time.sleep(4)
        growth_while_held = rss.growth_mib()
        for c, w, r in held:
            w.done_writing()
            r.read()
            w.close()
            c.close()
        for t in clients:
            t.join(120)
    assert growth_while_held < budget + 256, f"RSS grew by {growth_while_held} MiB"
    refused = [o for o in outcomes if o[1] == 503]
    landed = [o for o in outcomes if o[1] == 200]
    assert len(refused) + len(landed) == 57, outcomes
    assert refused and landed, [o[1] for o in outcomes]
    assert all(o[2] == "1" and "memory budget" in o[3]["error"]["message"] for o in refused), refused[0]
    for i, _, _, ack in landed:
        assert ack["rows"] == 400_000 and h.count(f"t{i}") == 400_000
    for i, _, _, _ in refused:
        assert h.count(f"t{i}") == 0
    assert sum(h.count(f"hold{i}") for i in range(7)) == 7 * 200_000

