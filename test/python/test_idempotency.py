"""Idempotency keys: a request named by a key commits once; a retry under the same key writes nothing and gets
the original acknowledgement with "replayed": true, over REST, the JSON endpoint, Flight DoPut and Flight SQL
ingest, across a restart, grouped or streamed. A key in progress is refused with 409 / ABORTED, a key reused for
another stream with 422 / INVALID_ARGUMENT, and a client can ask what became of its key."""
import json
import threading
import time

import adbc_driver_flightsql.dbapi as flight_sql
import httpx
import pyarrow as pa
import pyarrow.flight as fl
import pytest

import hosts
from clients import flight_put, ipc_bytes, wait_for
from testdata import events

ARROW = "application/vnd.apache.arrow.stream"


class Host:
    def __init__(self, path, options=""):
        self.path, self.options = path, options
        self.start()

    def start(self):
        self.host = hosts.start("py20", self.path)
        self.host.sql(hosts.load_sql())
        self.addr = self.host.sql(f"SELECT address FROM arrowport_listen('127.0.0.1:0'{self.options})")[0][0]

    def restart(self):
        self.host.sql("SELECT arrowport_stop()")
        assert self.host.close() == 0
        self.start()

    def sql(self, q):
        return self.host.sql(q)

    def count(self, table):
        return self.sql(f'SELECT count(*) FROM "{table}"')[0][0]

    def post(self, stream, table, key=None, path="streams"):
        headers = {"Content-Type": ARROW}
        if key:
            headers["Idempotency-Key"] = key
        return httpx.post(f"http://{self.addr}/{path}/{stream}", content=ipc_bytes(table), headers=headers, timeout=60)

    def put(self, stream, table, key):
        return flight_put(self.addr, stream, table, key=key)

    def status(self, stream, key):
        return httpx.get(f"http://{self.addr}/streams/{stream}/requests/{key}", timeout=30)


@pytest.fixture
def host(tmp_path):
    h = Host(str(tmp_path / "keys.duckdb"))
    yield h
    try:
        h.sql("SELECT arrowport_stop()")
    except Exception:
        pass
    assert h.host.close() == 0


def test_a_retry_under_the_same_key_writes_nothing_and_gets_the_acknowledgement(host):
    first = host.post("events", events(10), key="rest-1")
    assert first.status_code == 200 and "replayed" not in first.json(), first.text
    again = host.post("events", events(10), key="rest-1")
    assert again.status_code == 200, again.text
    ack = again.json()
    assert (ack["stream"], ack["table"], ack["rows"], ack["batches"], ack["replayed"]) == ("events", "main.events", 10, 1, True)
    # Flight: the same, with the key in gRPC metadata.
    assert host.put("events", events(7, start=10), "flight-1") == {"stream": "events", "table": "main.events", "rows": 7, "batches": 1}
    assert host.put("events", events(7, start=10), "flight-1") == {"stream": "events", "table": "main.events", "rows": 7, "batches": 1, "replayed": True}
    assert host.count("events") == 17
    # Without a key, a retry writes again (today's behaviour).
    assert host.post("events", events(3, start=100)).status_code == 200
    assert host.post("events", events(3, start=100)).status_code == 200
    assert host.count("events") == 23
    metrics = httpx.get(f"http://{host.addr}/metrics", timeout=30).text
    assert 'arrowport_replays_total{protocol="rest"} 1' in metrics and 'arrowport_replays_total{protocol="flight"} 1' in metrics


def test_keys_survive_a_restart_and_can_be_asked_about(host):
    assert host.post("events", events(10), key="k-restart").status_code == 200
    # A large request (streamed through a writer, not grouped) is recorded the same way.
    assert host.put("big", events(300_000), "k-big")["rows"] == 300_000
    host.restart()
    assert host.post("events", events(10), key="k-restart").json()["replayed"] is True
    assert host.put("big", events(300_000), "k-big")["replayed"] is True
    assert host.count("events") == 10 and host.count("big") == 300_000
    r = host.status("events", "k-restart").json()
    assert r == {"stream": "events", "key": "k-restart", "status": "committed",
                 "ack": {"stream": "events", "table": "main.events", "rows": 10, "batches": 1}}
    assert host.status("events", "never-sent").json()["status"] == "unknown"
    c = fl.connect(f"grpc://{host.addr}")
    results = list(c.do_action(fl.Action("request_status", json.dumps({"stream": "big", "key": "k-big"}).encode())))
    c.close()
    assert json.loads(results[0].body.to_pybytes())["ack"]["rows"] == 300_000


def test_a_key_belongs_to_one_stream_and_one_request_at_a_time(host):
    assert host.post("a", events(5), key="shared").status_code == 200
    r = host.post("b", events(5), key="shared")
    assert r.status_code == 422 and r.json()["error"]["code"] == "unprocessable", r.text
    assert 'belongs to stream "a"' in r.json()["error"]["message"]
    assert host.status("b", "shared").status_code == 422
    with pytest.raises(pa.ArrowInvalid, match='belongs to stream "a"'):
        host.put("b", events(5), "shared")
    # A request whose key is in progress: the first client holds its request open.
    c = fl.connect(f"grpc://{host.addr}")
    opts = fl.FlightCallOptions(headers=[(b"idempotency-key", b"slow")])
    w, rd = c.do_put(fl.FlightDescriptor.for_path("slow"), events(1).schema, options=opts)
    w.write_table(events(100))
    wait_for(lambda: host.status("slow", "slow").json()["status"] == "in_progress", what="the slow request in progress")
    r = host.post("slow", events(100), key="slow")
    assert r.status_code == 409 and r.json()["error"]["code"] == "in_progress", r.text
    w.done_writing()
    rd.read()
    w.close()
    c.close()
    assert host.status("slow", "slow").json()["status"] == "committed"
    assert host.post("slow", events(100), key="slow").json()["replayed"] is True
    assert host.count("slow") == 100
    assert host.sql("SELECT count(*) FROM duckdb_tables() WHERE table_name = 'b'") == [(0,)]
    bad = host.post("a", events(1), key="has space")
    assert bad.status_code == 400 and "idempotency key" in bad.json()["error"]["message"]


def test_concurrent_grouped_requests_with_keys_and_their_retries_land_exactly_once(host):
    def client(k):
        for i in range(5):
            key = f"c{k}-{i}"
            t = events(50, start=(k * 5 + i) * 50)
            for _ in range(2):  # every request is sent twice
                r = host.post("grouped", t, key=key)
                assert r.status_code in (200, 409), r.text
    threads = [threading.Thread(target=client, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert host.sql("SELECT count(*), count(DISTINCT id) FROM grouped") == [(2000, 2000)]
    assert host.sql("SELECT count(*) FROM arrowport.requests WHERE stream = 'grouped'") == [(40,)]


def test_a_failed_request_leaves_its_key_unused(host):
    host.sql("CREATE TABLE strict_t (id BIGINT PRIMARY KEY, timestamp BIGINT, value DOUBLE, category VARCHAR, metric DOUBLE)")
    host.sql("INSERT INTO strict_t VALUES (0, 0, 0, 'a', 0)")
    r = host.post("strict_t", events(5), key="clash")  # id 0 violates the primary key
    assert r.status_code == 409, r.text
    assert host.status("strict_t", "clash").json()["status"] == "unknown"
    assert host.post("strict_t", events(5, start=1), key="clash").json()["rows"] == 5
    assert host.count("strict_t") == 6


def test_flight_sql_ingest_and_the_json_endpoint_take_keys(host):
    import base64
    data = events(4)
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, data.schema) as w:
        w.write_table(data)
    payload = {"config": {"target_table": "legacy"},
               "batch": {"arrow_schema": base64.b64encode(data.schema.serialize()).decode(), "data": base64.b64encode(sink.getvalue().to_pybytes()).decode()}}
    for _ in range(2):
        r = httpx.post(f"http://{host.addr}/stream/legacy", json=payload, headers={"Idempotency-Key": "json-1"}, timeout=30)
        assert r.status_code == 200 and r.json()["rows_processed"] == 4, r.text
    assert r.json()["replayed"] is True and host.count("legacy") == 4
    kwargs = {"adbc.flight.sql.rpc.call_header.idempotency-key": "adbc-1"}
    for _ in range(2):
        with flight_sql.connect(f"grpc://{host.addr}", db_kwargs=kwargs) as conn, conn.cursor() as cur:
            assert cur.adbc_ingest("adbc_t", events(6), mode="create_append") == 6
    assert host.count("adbc_t") == 6


def test_keys_are_forgotten_after_the_window(tmp_path):
    h = Host(str(tmp_path / "window.duckdb"), ", idempotency_window := 1")
    try:
        assert h.post("w", events(5), key="short").status_code == 200
        assert h.post("w", events(5), key="short").json()["replayed"] is True
        wait_for(lambda: h.status("w", "short").json()["status"] == "unknown", within=10, what="the key forgotten")
        again = h.post("w", events(5), key="short")
        assert again.status_code == 200 and "replayed" not in again.json(), again.text
        assert h.count("w") == 10
        with pytest.raises(hosts.HostError, match="idempotency_window"):
            h.sql("FROM arrowport_listen('127.0.0.1:0', idempotency_window := 0)")
    finally:
        h.sql("SELECT arrowport_stop()")
        assert h.host.close() == 0


def test_a_large_request_is_replayed_over_both_protocols(host):
    """40 MB requests retried under their keys: the retry reads the acknowledgement (the body it sends is read
    and dropped), and the rows are there once."""
    big = events(1_000_000)
    for attempt in range(2):
        r = host.post("large", big, key="large-rest")
        assert r.status_code == 200 and r.json()["rows"] == 1_000_000, r.text
        ack = host.put("large_f", big, "large-flight")
        assert ack["rows"] == 1_000_000 and ack.get("replayed", False) == (attempt == 1), ack
    assert r.json()["replayed"] is True
    assert host.count("large") == 1_000_000 and host.count("large_f") == 1_000_000


def sql_over_network(addr, statement):
    with flight_sql.connect(f"grpc://{addr}") as conn, conn.cursor() as cur:
        cur.execute(statement)
        return cur.fetch_arrow_table().to_pylist()


def test_the_keys_table_holds_digests_and_network_sql_cannot_name_it(tmp_path):
    """The keys table keeps each key's SHA-256, never the key; a statement sent over the network that names
    arrowport's schema is refused (read_write included), and one that reaches the table by building its name
    finds only digests."""
    import hashlib
    h = Host(str(tmp_path / "digests.duckdb"), ", sql := 'read_write'")
    try:
        key = "customer-42-batch-7"
        assert h.post("events", events(5), key=key).status_code == 200
        digest = hashlib.sha256(key.encode()).hexdigest()
        rows = h.sql("SELECT key_sha256, stream FROM arrowport.requests")
        assert rows == [(digest, "events")]
        assert key not in str(h.sql("FROM arrowport.requests"))
        for statement in ["FROM arrowport.requests", "SELECT count(*) FROM \"ARROWPORT\".requests", "DELETE FROM arrowport.requests",
                          "DROP TABLE arrowport.requests", "UPDATE arrowport.requests SET committed_at = now() - INTERVAL 2 DAY",
                          "FROM query_table('arrowport.requests')", "CREATE VIEW peek AS FROM arrowport.requests"]:
            with pytest.raises(flight_sql.Error) as e:
                sql_over_network(h.addr, statement)
            assert "may not name the schema \"arrowport\"" in str(e.value), (statement, str(e.value))
        with pytest.raises(flight_sql.Error) as e:
            sql_over_network(h.addr, f"IMPORT DATABASE '{tmp_path}'")
        assert "IMPORT DATABASE is not accepted over the network" in str(e.value)
        # Names are read as DuckDB parses them: a column or a string that merely spells the schema is fine.
        sql_over_network(h.addr, "CREATE TABLE notes (arrowport_sender VARCHAR, note VARCHAR)")
        sql_over_network(h.addr, "INSERT INTO notes VALUES ('arrowport', 'arrowport.requests')")
        assert sql_over_network(h.addr, "SELECT arrowport_sender FROM notes WHERE note = 'arrowport.requests'") == [
            {"arrowport_sender": "arrowport"}]
        seen = sql_over_network(h.addr, "FROM query('FROM arrow' || 'port.requests')")
        assert [r["key_sha256"] for r in seen] == [digest] and key not in str(seen)
        # The key still works: nothing above changed the table.
        assert h.post("events", events(5), key=key).json()["replayed"] is True
        assert h.count("events") == 5
    finally:
        h.sql("SELECT arrowport_stop()")
        assert h.host.close() == 0


def test_keys_kept_by_an_older_layout_become_digests_and_still_answer(tmp_path):
    path = str(tmp_path / "older.duckdb")
    h = Host(path)
    assert h.post("events", events(8), key="old-1").status_code == 200
    h.sql("SELECT arrowport_stop()")
    assert h.host.close() == 0
    # The older layout: the key itself in a column `key`.
    plain = hosts.start("py20", path)
    plain.sql("ALTER TABLE arrowport.requests RENAME COLUMN key_sha256 TO key")
    plain.sql("UPDATE arrowport.requests SET key = 'old-1'")
    assert plain.close() == 0
    h.start()
    try:
        again = h.post("events", events(8), key="old-1")
        assert again.status_code == 200 and again.json()["replayed"] is True, again.text + str(h.sql("FROM duckdb_columns() WHERE table_name = 'requests'"))
        assert h.count("events") == 8
        assert h.sql("SELECT key_sha256 = sha256('old-1') FROM arrowport.requests") == [(True,)]
        assert h.sql("SELECT count(*) FROM duckdb_columns() WHERE table_name = 'requests' AND column_name = 'key'") == [(0,)]
    finally:
        h.sql("SELECT arrowport_stop()")
        assert h.host.close() == 0
