"""Flight DoPut end to end: a real client (pyarrow.flight, or raw gRPC for malformed input) against DuckDB
hosts with arrowport loaded; every outcome is checked in DuckDB afterwards."""
import json
import os
import subprocess
import sys
import threading
import time

import duckdb
import grpc
import pyarrow as pa
import pyarrow.flight as fl
import pytest

import flightraw
import hosts
from clients import flight_put
from testdata import events


def client(addr):
    return fl.connect(f"grpc://{addr}")


def put(addr, name, table, descriptor=None, chunk=None):
    return flight_put(addr, name, table, descriptor=descriptor, chunk=chunk)


def wait_idle(host):
    """Waits (up to 20 s) until no request is in flight on any of the host's listeners."""
    deadline = time.time() + 20
    while time.time() < deadline and host.sql("SELECT sum(requests_in_flight)::BIGINT FROM arrowport_status()") != [(0,)]:
        time.sleep(0.1)



def test_doput_lands_rows_with_faithful_types(listening):
    t = events(10_000)
    meta = put(listening.addr, "events", t, chunk=1000)
    assert meta == {"stream": "events", "table": "main.events", "rows": 10_000, "batches": 10}
    assert listening.sql("SELECT count(*), sum(id)::BIGINT, sum(value), count(DISTINCT category) FROM events") == [(10_000, 49_995_000, 12_498_750.0, 4)]
    # The types are what DuckDB itself makes of the same Arrow data.
    oracle = duckdb.connect()
    oracle.register("t", t)
    want = oracle.execute("SELECT column_name, column_type FROM (DESCRIBE SELECT * FROM t)").fetchall()
    got = listening.sql("SELECT column_name, column_type FROM (DESCRIBE events)")
    assert [tuple(r) for r in got] == [tuple(r) for r in want]


def test_richer_types_round_trip(listening):
    t = pa.table({
        "ts": pa.array([1_700_000_000_000_000, None], pa.timestamp("us", tz="UTC")),
        "d": pa.array([19000, 19001], pa.date32()),
        "dec": pa.array([1, None], pa.decimal128(18, 3)),
        "tags": pa.array([["x", "y"], []], pa.list_(pa.string())),
        "s": pa.array([{"a": 1, "b": "z"}, None], pa.struct([("a", pa.int32()), ("b", pa.string())])),
        "dict": pa.array(["red", "blue"]).dictionary_encode(),
        "u8": pa.array([255, 0], pa.uint8()),
        "bin": pa.array([b"\x00\x01", None], pa.binary()),
    })
    put(listening.addr, "rich", t)
    rows = listening.sql("SELECT typeof(ts), typeof(d), typeof(dec), typeof(tags), typeof(s), typeof(dict), typeof(u8) FROM rich LIMIT 1")
    assert rows == [("TIMESTAMP WITH TIME ZONE", "DATE", "DECIMAL(18,3)", "VARCHAR[]", "STRUCT(a INTEGER, b VARCHAR)", "VARCHAR", "UTINYINT")]
    assert listening.sql("SELECT d::VARCHAR, dec::VARCHAR, len(tags), s.b, dict, u8 FROM rich ORDER BY u8") == [
        ("2022-01-09", None, 0, None, "blue", 0),
        ("2022-01-08", "1.000", 2, "z", "red", 255),
    ]


def test_cmd_descriptor_with_the_original_json(py_listening):
    desc = fl.FlightDescriptor.for_command(json.dumps({"stream_name": "clicks"}).encode())
    meta = put(py_listening.addr, None, events(5), descriptor=desc)
    assert meta["stream"] == "clicks" and meta["rows"] == 5
    assert py_listening.count("clicks") == 5


def test_identifiers_needing_quotes(py_listening):
    put(py_listening.addr, 'My "Table"; DROP TABLE x', pa.table({"select": [1, 2], "a col": ["p", "q"]}))
    assert py_listening.sql('SELECT sum("select"), max("a col") FROM "My ""Table""; DROP TABLE x"') == [(3, "q")]


def expect_flight_error(fn, cls, text):
    with pytest.raises(cls) as e:
        fn()
    assert text in str(e.value), str(e.value)


def test_schema_conflict_is_refused_and_writes_nothing(py_listening):
    put(py_listening.addr, "events", events(3))
    bad = pa.table({"id": pa.array(["x"]), "timestamp": [1], "value": [1.0], "category": ["a"], "metric": [1.0]})
    expect_flight_error(lambda: put(py_listening.addr, "events", bad), pa.ArrowException,
                        'column "id" is BIGINT in the table but VARCHAR in the stream')
    assert py_listening.count("events") == 3


def test_a_batch_that_violates_the_table_rolls_back_the_whole_request(py_listening):
    py_listening.sql("CREATE TABLE strict_t (id BIGINT PRIMARY KEY)")
    t = pa.table({"id": pa.array([1, 2, 3, 4, 4], pa.int64())})
    with pytest.raises(pa.ArrowException) as e:
        put(py_listening.addr, "strict_t", t, chunk=2)
    assert "Constraint Error" in str(e.value)
    assert py_listening.count("strict_t") == 0


def test_unsupported_type_names_the_column(py_listening):
    u = pa.UnionArray.from_sparse(pa.array([0, 1], pa.int8()), [pa.array([1, 2]), pa.array(["a", "b"])])
    t = pa.table({"ok": pa.array([1, 2], pa.int32()), "u": u})
    expect_flight_error(lambda: put(py_listening.addr, "unions", t), pa.ArrowException,
                        'column "u" has Arrow type Union')
    assert py_listening.sql("SELECT count(*) FROM duckdb_tables() WHERE table_name = 'unions'") == [(0,)]


def raw_error(addr, messages):
    with pytest.raises(grpc.RpcError) as e:
        flightraw.do_put(addr, messages)
    return e.value.code(), e.value.details()


def truncated_put():
    """A DoPut into `events` whose batch body is cut in half (arrow-ipc panics decoding it)."""
    schema_msg, batch_msg = flightraw.ipc_messages(events(100))[:2]
    return [flightraw.flight_data(flightraw.descriptor(1, path=["events"]), header=schema_msg[0]),
            flightraw.flight_data(header=batch_msg[0], body=batch_msg[1][: len(batch_msg[1]) // 2])]


def test_malformed_input_gets_precise_statuses_and_nothing_lands(py_listening):
    addr = py_listening.addr
    put(addr, "events", events(4))
    schema_msg, batch_msg = flightraw.ipc_messages(events(100))[:2]
    path = flightraw.descriptor(1, path=["events"])
    cases = {
        "garbage": [flightraw.flight_data(path, header=b"\xde\xad\xbe\xef" * 8)],
        "truncated": truncated_put(),
        "schema change": [flightraw.flight_data(path, header=schema_msg[0]),
                          flightraw.flight_data(header=batch_msg[0], body=batch_msg[1]),
                          flightraw.flight_data(header=flightraw.ipc_messages(pa.table({"x": ["y"]}))[0][0])],
        "unknown descriptor": [flightraw.flight_data(flightraw.descriptor(0, path=["events"]), header=schema_msg[0])],
        "no descriptor": [flightraw.flight_data(None, header=schema_msg[0])],
        "cmd not json": [flightraw.flight_data(flightraw.descriptor(2, cmd=b"SELECT 1"), header=schema_msg[0])],
        "two path elements": [flightraw.flight_data(flightraw.descriptor(1, path=["a", "b"]), header=schema_msg[0])],
    }
    expected = {
        "garbage": "invalid Arrow IPC data",
        "truncated": "invalid Arrow IPC data",
        "schema change": "the schema changed in the middle of the stream",
        "unknown descriptor": "unknown descriptor type 0",
        "no descriptor": "has no flight descriptor",
        "cmd not json": "the CMD descriptor is not JSON",
        "two path elements": "has 2 elements",
    }
    for name, messages in cases.items():
        code, details = raw_error(addr, messages)
        assert code == grpc.StatusCode.INVALID_ARGUMENT, (name, code, details)
        assert expected[name] in details, (name, details)
    # Still serving, and exactly the committed rows are there.
    put(addr, "events", events(6))
    assert py_listening.count("events") == 10


def test_a_contained_panic_prints_nothing_on_the_hosts_stderr(tmp_path, monkeypatch):
    """arrow-ipc panics on some truncated bodies; arrowport contains the panic and answers INVALID_ARGUMENT, and
    the user's DuckDB session (this host's stderr) sees no panic report unless ARROWPORT_LOG_PANICS=1."""
    def stderr_after_truncated_put(name):
        host = hosts.start("py20", str(tmp_path / f"{name}.duckdb"))
        host.sql(hosts.load_sql())
        addr = host.sql("SELECT arrowport_listen('127.0.0.1:0')")[0][0]
        code, details = raw_error(addr, truncated_put())
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "invalid Arrow IPC data" in details, details
        host.sql("SELECT arrowport_stop()")
        assert host.close() == 0
        return host.stderr()

    err = stderr_after_truncated_put("quiet")
    assert "panicked" not in err and "RUST_BACKTRACE" not in err, err[-2000:]
    monkeypatch.setenv("ARROWPORT_LOG_PANICS", "1")
    assert "panicked" in stderr_after_truncated_put("loud")


def test_an_empty_stream_succeeds_and_writes_nothing(py_listening):
    meta = put(py_listening.addr, "nothing", events(0))
    assert meta == {"stream": "nothing", "table": "main.nothing", "rows": 0, "batches": 0}
    assert py_listening.sql("SELECT count(*) FROM duckdb_tables() WHERE table_name = 'nothing'") == [(0,)]


def test_compressed_ipc_bodies_decode(py_listening):
    for codec in ("zstd", "lz4"):
        c = client(py_listening.addr)
        t = events(5000)
        opts = fl.FlightCallOptions(write_options=pa.ipc.IpcWriteOptions(compression=codec))
        writer, reader = c.do_put(fl.FlightDescriptor.for_path("packed"), t.schema, options=opts)
        writer.write_table(t, max_chunksize=1000)
        writer.done_writing()
        assert json.loads(reader.read().to_pybytes())["rows"] == 5000
        writer.close()
    assert py_listening.sql("SELECT count(*), sum(id)::BIGINT FROM packed") == [(10_000, 2 * sum(range(5000)))]


def test_messages_over_the_limit_are_resource_exhausted(db_path):
    host = hosts.start("py20", db_path)
    try:
        host.sql(hosts.load_sql())
        rows = dict(host.sql("FROM arrowport_listen('127.0.0.1:0', max_message_bytes := 1048576)"))
        addr = rows["flight"]
        assert rows["rest"] == addr
        big = pa.table({"blob": pa.array([b"x" * (2 << 20)])})
        with pytest.raises(pa.ArrowException) as e:
            put(addr, "big", big)
        assert "over the listener's size limit" in str(e.value)
        assert "RESOURCE_EXHAUSTED" in str(e.value) or "resource exhausted" in str(e.value).lower()
        assert put(addr, "big", pa.table({"blob": pa.array([b"small"])}))["rows"] == 1
        assert host.sql("SELECT count(*) FROM big") == [(1,)]
    finally:
        host.sql("SELECT arrowport_stop()")
        assert host.close() == 0


def test_concurrent_doputs_into_one_table_and_into_many(py_listening):
    errors = []

    def send(name, i):
        try:
            put(py_listening.addr, name, events(2000, start=i * 2000), chunk=500)
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=send, args=("shared", i)) for i in range(8)]
    threads += [threading.Thread(target=send, args=(f"own_{i}", i)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert py_listening.sql("SELECT count(*), count(DISTINCT id) FROM shared") == [(16_000, 16_000)]
    for i in range(4):
        assert py_listening.count(f"own_{i}") == 2000


CLIENT_THAT_DIES = r"""
import sys, time, pyarrow as pa, pyarrow.flight as fl
c = fl.connect("grpc://" + sys.argv[1])
t = pa.table({"id": pa.array(range(1000), pa.int64())})
w, r = c.do_put(fl.FlightDescriptor.for_path("halfway"), t.schema)
for _ in range(5):
    w.write_table(t)
print("sent", flush=True)
time.sleep(0.5)
import os; os._exit(3)
"""


def test_a_client_that_disconnects_mid_stream_writes_nothing(py_listening):
    proc = subprocess.run([sys.executable, "-c", CLIENT_THAT_DIES, py_listening.addr], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 3 and "sent" in proc.stdout
    wait_idle(py_listening)
    assert py_listening.sql("SELECT count(*) FROM duckdb_tables() WHERE table_name = 'halfway'") == [(0,)]
    assert put(py_listening.addr, "halfway", pa.table({"id": pa.array([1], pa.int64())}))["rows"] == 1
    assert py_listening.count("halfway") == 1


def test_a_call_cancelled_mid_stream_writes_nothing(py_listening):
    """A client whose call is cancelled mid-stream (here: its deadline passes) resets the HTTP/2 stream with
    CANCEL; that is not the end of its data, so nothing of what it sent may land."""
    batch = pa.record_batch({"id": pa.array(range(1000), pa.int64())})
    c = client(py_listening.addr)
    writer, _ = c.do_put(fl.FlightDescriptor.for_path("cancelled"), batch.schema, options=fl.FlightCallOptions(timeout=1.0))
    for _ in range(5):
        writer.write_batch(batch)
    time.sleep(2.0)
    with pytest.raises(fl.FlightError):
        writer.write_batch(batch)
        writer.done_writing()
        writer.close()
    c.close()
    wait_idle(py_listening)
    assert py_listening.sql("SELECT count(*) FROM duckdb_tables() WHERE table_name = 'cancelled'") == [(0,)]
    assert put(py_listening.addr, "cancelled", pa.table({"id": pa.array([1], pa.int64())}))["rows"] == 1
    assert py_listening.count("cancelled") == 1


def test_stop_rolls_back_a_request_in_flight_and_joins(py_listening):
    c = client(py_listening.addr)
    t = pa.table({"id": pa.array(range(1000), pa.int64())})
    writer, reader = c.do_put(fl.FlightDescriptor.for_path("interrupted"), t.schema)
    writer.write_table(t)
    deadline = time.time() + 20
    while time.time() < deadline and py_listening.sql("SELECT max(requests_in_flight) FROM arrowport_status()") != [(1,)]:
        time.sleep(0.05)
    assert py_listening.sql("SELECT arrowport_stop()") == [(1,)]
    with pytest.raises(pa.ArrowException):
        writer.write_table(t)
        writer.done_writing()
        reader.read()
        writer.close()
    assert py_listening.sql("SELECT count(*) FROM duckdb_tables() WHERE table_name = 'interrupted'") == [(0,)]
    assert py_listening.sql("SELECT count(*) FROM arrowport_status()") == [(0,)]
    threads = [t.name for t in threading.enumerate()]  # the host's threads are another process; check via /proc
    assert threads  # (the test process itself is unaffected)
    host_threads = os.listdir(f"/proc/{py_listening.host.proc.pid}/task")
    names = {open(f"/proc/{py_listening.host.proc.pid}/task/{t}/comm").read().strip() for t in host_threads}
    assert not any(n.startswith("arrowport") for n in names), names


def test_listening_twice_on_one_address_is_an_error(py_listening):
    with pytest.raises(hosts.HostError) as e:
        py_listening.sql(f"SELECT arrowport_listen('{py_listening.addr}')")
    assert f"arrowport is already listening on {py_listening.addr}" in str(e.value)


def test_list_flights_and_schemas(py_listening):
    put(py_listening.addr, "events", events(3))
    c = client(py_listening.addr)
    flights = {tuple(p.decode() for p in f.descriptor.path): f.schema.names for f in c.list_flights()}
    assert flights == {("events",): ["id", "timestamp", "value", "category", "metric"]}
    schema = c.get_schema(fl.FlightDescriptor.for_path("events")).schema
    assert schema.field("id").type == pa.int64() and schema.field("category").type == pa.string()
    info = c.get_flight_info(fl.FlightDescriptor.for_path("events"))
    assert info.schema.names == ["id", "timestamp", "value", "category", "metric"]
    with pytest.raises(pa.ArrowException) as e:
        c.get_schema(fl.FlightDescriptor.for_path("missing"))
    assert "has no table yet" in str(e.value)


@pytest.mark.parametrize("kind", hosts.HOST_KINDS)
def test_host_exit_with_listener_running_keeps_acknowledged_rows(kind, db_path):
    host = hosts.start(kind, db_path)
    host.sql(hosts.load_sql())
    addr = host.sql("SELECT arrowport_listen('127.0.0.1:0')")[0][0]
    assert put(addr, "kept", events(1234))["rows"] == 1234
    rc = host.close(timeout=60)
    assert rc == 0, host.stderr()[-2000:]
    again = duckdb.connect(db_path)
    assert again.execute("SELECT count(*) FROM kept").fetchone()[0] == 1234
