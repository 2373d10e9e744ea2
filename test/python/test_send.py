"""`arrowport_send`: one DuckDB host sends a query's result to another's stream (or to any Flight server), exactly
once. Every test runs real host processes; the receiver's table is compared with the sender's in SQL."""
import os
import socket
import threading
import time

import pyarrow as pa
import pyarrow.flight as fl
import pytest

import hosts
from clients import ipc_bytes, wait_for
from test_security import make_pki
from test_types import COLUMNS

# DuckDB types that do not come from Arrow, as SQL expressions over the row number `id` (0, 1, 2; 1 is NULL).
NATIVE = {
    "hugeint": "170141183460469231731687303715884105727::HUGEINT",
    "uhugeint": "340282366920938463463374607431768211455::UHUGEINT",
    "n_uuid": "'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'::UUID",
    "n_interval": "INTERVAL 1 YEAR + INTERVAL 2 DAY + INTERVAL 3 MICROSECOND",
    "n_enum": "'b'::ENUM('a', 'b')",
    "n_decimal": "-12345.6789::DECIMAL(18,4)",
    "n_timestamptz": "'2024-02-29 12:34:56.789+01'::TIMESTAMPTZ",
    "n_list_struct": "[{'k': 'x', 'v': [1.5, NULL]}]",
    "n_blob": "'\\x00\\xFF'::BLOB",
    "n_varchar": "repeat('ü', 1000)",
}


# Arrow has no enumeration type: an ENUM travels as a dictionary and lands as VARCHAR, values unchanged.
RETYPED = {"n_enum": "VARCHAR"}


def start_host(kind, path):
    h = hosts.start(kind, path)
    h.sql(hosts.load_sql())
    return h


def send_sql(url, stream, query, **options):
    opts = "".join(f", {k} := {v}" for k, v in options.items())
    q = query.replace("'", "''")
    return f"FROM arrowport_send('{url}', '{stream}', query := '{q}'{opts})"


def sent_row(h, url, stream, query, **options):
    rows = h.sql(send_sql(url, stream, query, **options))
    assert len(rows) == 1
    keys = ["stream", "table", "rows", "batches", "bytes", "replayed", "idempotency_key", "retries", "elapsed_seconds"]
    return dict(zip(keys, rows[0]))


@pytest.fixture
def receiver(tmp_path):
    h = start_host("py20", str(tmp_path / "receiver.duckdb"))
    addr = h.sql("SELECT arrowport_listen('127.0.0.1:0')")[0][0]
    yield h, addr
    try:
        h.sql("SELECT arrowport_stop()")
        h.close()
    except hosts.HostDied:
        pass


def source_table():
    """Every Arrow type of the fidelity list, three rows with one NULL each, plus the row number."""
    columns = {"id": pa.array([0, 1, 2], pa.int32())}
    columns.update(COLUMNS)
    return pa.table(columns)


@pytest.mark.parametrize("sender_kind,scheme", [("py15", "grpc"), ("cli", "http"), ("py20", "grpc")])
def test_every_type_round_trips_value_for_value(receiver, tmp_path, sender_kind, scheme):
    rx, addr = receiver
    sender_path = str(tmp_path / "sender.duckdb")
    if sender_kind == "cli":
        # The CLI cannot register an Arrow table: a Python host of the same file makes the source, then closes.
        maker = hosts.start("py15", sender_path)
    else:
        maker = hosts.start(sender_kind, sender_path)
    maker.register("arrow_src", ipc_bytes(source_table()))
    natives = ", ".join(f"CASE WHEN id = 1 THEN NULL ELSE {expr} END AS {name}" for name, expr in NATIVE.items())
    maker.sql(f"CREATE TABLE src AS SELECT *, {natives} FROM arrow_src")
    if sender_kind == "cli":
        assert maker.close() == 0
        sender = start_host("cli", sender_path)
    else:
        sender = maker
        sender.sql(hosts.load_sql())
    got = sent_row(sender, f"{scheme}://{addr}", "typed", "FROM src ORDER BY id", batch_rows=2)
    assert (got["stream"], got["table"], got["rows"], got["replayed"], got["retries"]) == ("typed", "main.typed", 3, False, 0)
    assert got["batches"] == 2 and got["bytes"] > 0 and got["elapsed_seconds"] > 0
    assert got["idempotency_key"].startswith("send-")
    columns = [r[0] for r in sender.sql("SELECT column_name FROM (DESCRIBE src)")]
    sender.close()

    # Compared in SQL: the sender's file attached next to the receiver's table, column by column.
    rx.sql(f"ATTACH '{sender_path}' AS sender (READ_ONLY)")
    mismatches = []
    for c in columns:
        want = rx.sql(f'SELECT typeof("{c}"), "{c}"::VARCHAR FROM sender.src ORDER BY id')
        have = rx.sql(f'SELECT typeof("{c}"), "{c}"::VARCHAR FROM typed ORDER BY id')
        if c in RETYPED:
            want = [(RETYPED[c], v) for _, v in want]
        if want != have:
            mismatches.append((c, want, have))
    assert mismatches == []
    rx.sql("DETACH sender")


def test_a_local_failure_mid_stream_leaves_nothing_on_the_remote(receiver, tmp_path):
    rx, addr = receiver
    sender = start_host("py20", str(tmp_path / "sender.duckdb"))
    failing = "SELECT CASE WHEN i < 300000 THEN i ELSE error('boom at ' || i) END AS i FROM range(400000) t(i)"
    for scheme in ["grpc", "http"]:
        with pytest.raises(hosts.HostError) as e:
            sender.sql(send_sql(f"{scheme}://{addr}", f"half_{scheme}", failing, batch_rows=1000))
        assert "the query failed: Invalid Input Error: boom at 300000; nothing was committed on the remote" in str(e.value)
    wait_for(lambda: rx.sql("SELECT sum(requests_in_flight) FROM arrowport_status()")[0][0] in (None, 0),
             what="the receiver's requests ended")
    assert rx.sql("SELECT table_name, (SELECT 1) FROM duckdb_tables() WHERE table_name LIKE 'half%'") == []
    # The same sender and receiver go on working.
    assert sent_row(sender, f"grpc://{addr}", "after", "SELECT 1 AS x")["rows"] == 1
    sender.close()


def test_the_remote_killed_mid_stream_leaves_nothing_and_a_clear_error(tmp_path):
    rx_path = str(tmp_path / "receiver.duckdb")
    rx = start_host("py20", rx_path)
    addr = rx.sql("SELECT arrowport_listen('127.0.0.1:0')")[0][0]
    rx.sql("CREATE TABLE big (i BIGINT, s VARCHAR)")
    sender = start_host("py20", str(tmp_path / "sender.duckdb"))
    outcome = {}

    def send():
        try:
            outcome["row"] = sender.sql(send_sql(f"grpc://{addr}", "big", "SELECT i, 'row ' || i AS s FROM range(300000000) t(i)",
                                                 retries=2, timeout=5))
        except hosts.HostError as e:
            outcome["error"] = str(e)

    t = threading.Thread(target=send)
    t.start()
    deadline = time.time() + 30
    while time.time() < deadline and rx.sql("SELECT sum(requests_in_flight) FROM arrowport_status()")[0][0] in (None, 0):
        time.sleep(0.05)
    time.sleep(0.5)
    rx.proc.kill()
    rx.proc.wait()
    t.join(60)
    assert not t.is_alive()
    assert "row" not in outcome, outcome
    err = outcome["error"]
    assert "could not connect to" in err or "connection" in err, err
    assert "gave up after 3 attempts" in err, err
    rx = start_host("py20", rx_path)
    assert rx.sql("SELECT count(*) FROM big")[0][0] == 0
    rx.close()
    sender.close()


def test_tls_with_a_test_ca(tmp_path):
    pki = make_pki(str(tmp_path))
    rx = start_host("py20", str(tmp_path / "receiver.duckdb"))
    addr = rx.sql(f"FROM arrowport_listen('127.0.0.1:0', tls_cert := '{pki['server.pem']}', tls_key := '{pki['server.key']}')")[0][1]
    port = addr.rsplit(":", 1)[1]
    sender = start_host("py15", str(tmp_path / "sender.duckdb"))
    ca = f"'{pki['ca.pem']}'"
    for url in [f"grpc+tls://localhost:{port}", f"https://127.0.0.1:{port}"]:
        got = sent_row(sender, url, "secure", "SELECT i FROM range(1000) t(i)", tls_ca=ca)
        assert got["rows"] == 1000
    assert rx.sql("SELECT count(*), sum(i) FROM secure")[0] == (2000, 2 * 499500)
    # Without the CA, the server is not trusted: a permanent failure is not retried forever.
    with pytest.raises(hosts.HostError) as e:
        sender.sql(send_sql(f"grpc+tls://localhost:{port}", "secure", "SELECT 1 AS i", tls_ca=f"'{pki['server.key']}'"))
    assert "tls_ca" in str(e.value)
    with pytest.raises(hosts.HostError) as e:
        sender.sql(send_sql(f"https://127.0.0.1:{port}", "secure", "SELECT 1 AS i", retries=0))
    assert "certificate" in str(e.value).lower() or "UnknownIssuer" in str(e.value), str(e.value)
    sender.close()
    rx.sql("SELECT arrowport_stop()")
    rx.close()


def test_a_scoped_token_reaches_its_stream_only(tmp_path):
    rx = start_host("py20", str(tmp_path / "receiver.duckdb"))
    addr = rx.sql("FROM arrowport_listen('127.0.0.1:0', auth := 'token')")[0][1]
    secret = rx.sql("SELECT token FROM arrowport_create_token('edge', streams := ['metrics'])")[0][0]
    sender = start_host("py20", str(tmp_path / "sender.duckdb"))
    for scheme in ["grpc", "http"]:
        got = sent_row(sender, f"{scheme}://{addr}", "metrics", "SELECT 42 AS v", token=f"'{secret}'")
        assert got["rows"] == 1
        with pytest.raises(hosts.HostError) as e:
            sender.sql(send_sql(f"{scheme}://{addr}", "other", "SELECT 42 AS v", token=f"'{secret}'"))
        assert "edge" in str(e.value) and "other" in str(e.value) and "gave up" not in str(e.value), str(e.value)
        with pytest.raises(hosts.HostError) as e:
            sender.sql(send_sql(f"{scheme}://{addr}", "metrics", "SELECT 42 AS v"))
        assert "token" in str(e.value) and "gave up" not in str(e.value), str(e.value)
    assert rx.sql("SELECT count(*) FROM metrics")[0][0] == 2
    assert rx.sql("SELECT count(*) FROM duckdb_tables() WHERE table_name = 'other'")[0][0] == 0
    sender.close()
    rx.sql("SELECT arrowport_stop()")
    rx.close()


class AckCutter:
    """A TCP proxy that, on its first connection, passes the request through but cuts the connection at the
    first bytes of the acknowledgement (arrowport's JSON ack), so the request commits and its answer is lost."""

    def __init__(self, upstream_port):
        self.upstream = upstream_port
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self.cut = 0
        threading.Thread(target=self.accept, daemon=True).start()

    def accept(self):
        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            first = self.connections == 1
            server = socket.create_connection(("127.0.0.1", self.upstream))
            threading.Thread(target=self.pipe, args=(client, server, False), daemon=True).start()
            threading.Thread(target=self.pipe, args=(server, client, first), daemon=True).start()

    def pipe(self, src, dst, cut_ack):
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if cut_ack and b'"rows"' in data:
                    self.cut += 1
                    break
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def close(self):
        self.sock.close()


@pytest.mark.parametrize("scheme", ["grpc", "http"])
def test_a_lost_acknowledgement_is_retried_and_lands_once(receiver, tmp_path, scheme):
    rx, addr = receiver
    proxy = AckCutter(int(addr.rsplit(":", 1)[1]))
    sender = start_host("py20", str(tmp_path / "sender.duckdb"))
    got = sent_row(sender, f"{scheme}://127.0.0.1:{proxy.port}", "once", "SELECT i FROM range(250000) t(i)")
    assert proxy.cut == 1 and proxy.connections >= 2
    assert (got["rows"], got["replayed"], got["retries"]) == (250000, True, 1), got
    assert rx.sql("SELECT count(*), count(DISTINCT i) FROM once")[0] == (250000, 250000)
    import httpx
    protocol = "flight" if scheme == "grpc" else "rest"
    assert f'arrowport_replays_total{{protocol="{protocol}"}} 1' in httpx.get(f"http://{addr}/metrics").text
    # The key it was sent under names the request on the remote.
    r = httpx.get(f"http://{addr}/streams/once/requests/{got['idempotency_key']}")
    assert r.json()["status"] == "committed" and r.json()["ack"]["rows"] == 250000
    sender.close()
    proxy.close()


def test_a_busy_remote_is_retried_and_a_given_key_is_kept(receiver, tmp_path):
    rx, addr = receiver
    sender = start_host("py20", str(tmp_path / "sender.duckdb"))
    first = sent_row(sender, f"http://{addr}", "keyed", "SELECT 1 AS v", idempotency_key="'nightly-2026-12-03'")
    again = sent_row(sender, f"grpc://{addr}", "keyed", "SELECT 1 AS v", idempotency_key="'nightly-2026-12-03'")
    assert (first["replayed"], again["replayed"], again["idempotency_key"]) == (False, True, "nightly-2026-12-03")
    assert rx.sql("SELECT count(*) FROM keyed")[0][0] == 1
    # Connection refused is transient: retried, then a clear error naming the key.
    with pytest.raises(hosts.HostError) as e:
        sender.sql(send_sql("grpc://127.0.0.1:1", "keyed", "SELECT 1 AS v", retries=2, idempotency_key="'k-refused'"))
    assert "could not connect to 127.0.0.1:1" in str(e.value) and "gave up after 3 attempts" in str(e.value)
    assert 'idempotency key "k-refused"' in str(e.value)
    sender.close()


class CountingFlightServer(fl.FlightServerBase):
    """A plain pyarrow Flight server: DoPut reads the whole stream and keeps only counts (or the table)."""

    def __init__(self, keep):
        super().__init__("grpc://127.0.0.1:0")
        self.keep, self.puts, self.tables = keep, [], []

    def do_put(self, context, descriptor, reader, writer):
        rows, batches = 0, 0
        kept = []
        for chunk in reader:
            rows += chunk.data.num_rows
            batches += 1
            if self.keep:
                kept.append(chunk.data)
        self.puts.append((descriptor.path, rows, batches))
        if self.keep:
            self.tables.append(pa.Table.from_batches(kept, schema=reader.schema))


def test_any_flight_server_that_takes_doput_with_a_path(tmp_path):
    server = CountingFlightServer(keep=True)
    threading.Thread(target=server.serve, daemon=True).start()
    sender = start_host("py20", str(tmp_path / "sender.duckdb"))
    got = sent_row(sender, f"grpc://127.0.0.1:{server.port}", "plain", "SELECT i, i::VARCHAR AS s FROM range(10000) t(i)",
                   compression="'zstd'")
    assert server.puts == [([b"plain"], 10000, 1)]
    assert (got["stream"], got["table"], got["rows"], got["batches"], got["replayed"]) == ("plain", None, 10000, 1, False)
    table = server.tables[0]
    assert table.column_names == ["i", "s"] and table.column("i").to_pylist() == list(range(10000))
    assert table.column("s").to_pylist()[-1] == "9999"
    sender.close()
    server.shutdown()


def test_a_hundred_million_rows_stream_in_bounded_memory(tmp_path):
    server = CountingFlightServer(keep=False)
    threading.Thread(target=server.serve, daemon=True).start()
    sender = start_host("py20", str(tmp_path / "sender.duckdb"))
    sender.sql("SELECT 1")
    with hosts.PeakRss(sender.proc.pid, every=0.05) as rss:
        got = sent_row(sender, f"grpc://127.0.0.1:{server.port}", "huge", "SELECT i FROM range(100000000) t(i)")
    assert got["rows"] == 100_000_000
    assert len(server.puts) == 1 and server.puts[0][1] == 100_000_000
    growth = rss.growth_mib()
    print(f"sender RSS {rss.before // 1024} MiB before, {rss.peak // 1024} MiB peak: +{growth} MiB for 100M rows")
    assert growth < 256, f"the sender grew by {growth} MiB"
    sender.close()
    server.shutdown()


def test_clients_over_the_network_cannot_send(tmp_path):
    import adbc_driver_flightsql.dbapi as flightsql
    rx = start_host("py20", str(tmp_path / "receiver.duckdb"))
    addr = rx.sql("FROM arrowport_listen('127.0.0.1:0', sql := 'read_write', allow_unauthenticated := true)")[0][1]
    target = f"grpc://{addr}"
    # The host's own view and macro over arrowport_send: defining them sends nothing (it acts when run).
    rx.sql(f"CREATE VIEW send_view AS {send_sql(target, 'leak', 'SELECT 1 AS x')}")
    rx.sql(f"CREATE MACRO send_macro() AS TABLE {send_sql(target, 'leak', 'SELECT 1 AS x')}")
    attempts = [
        send_sql(target, "leak", "SELECT 1 AS x"),
        "FROM query('FROM arrowport' || '_send(''" + target + "'', ''leak'', query := ''SELECT 1 AS x'')')",
        "FROM send_view",
        "FROM send_macro()",
    ]
    with flightsql.connect(f"grpc://{addr}") as conn:
        for sql in attempts:
            with conn.cursor() as cur:
                with pytest.raises(Exception) as e:
                    cur.execute(sql)
                    cur.fetchall()
                assert "arrowport_send cannot be" in str(e.value), str(e.value)
    assert rx.sql("SELECT count(*) FROM duckdb_tables() WHERE table_name = 'leak'")[0][0] == 0
    rx.sql("SELECT arrowport_stop()")
    rx.close()


def test_options_are_checked_before_anything_is_sent(tmp_path):
    h = start_host("py20", str(tmp_path / "sender.duckdb"))
    cases = [
        ("FROM arrowport_send('ftp://h:1', 's', query := 'SELECT 1')", "unsupported scheme"),
        ("FROM arrowport_send('grpc://h', 's', query := 'SELECT 1')", "needs a port"),
        ("FROM arrowport_send('grpc://127.0.0.1:9', 's')", "needs query := "),
        ("FROM arrowport_send('grpc://127.0.0.1:9', 's', query := 'SELECT 1', compression := 'gzip')", "allowed: zstd, lz4, none"),
        ("FROM arrowport_send('grpc://127.0.0.1:9', 's', query := 'SELECT 1', retries := -1)", "retries"),
        ("FROM arrowport_send('grpc://127.0.0.1:9', 's', query := 'SELECT 1', timeout := 0)", "timeout"),
        ("FROM arrowport_send('grpc://127.0.0.1:9', 's', query := 'SELECT 1', idempotency_key := 'a b')", "idempotency_key"),
        ("FROM arrowport_send('grpc://127.0.0.1:9', '', query := 'SELECT 1')", "the stream name is empty"),
        ("FROM arrowport_send('grpc://127.0.0.1:9', 's', query := 'CREATE TABLE x (i INT)')", "returns rows"),
        ("FROM arrowport_send('grpc://127.0.0.1:9', 's', query := 'SELECT * FROM nowhere')", "nowhere"),
    ]
    for sql, expected in cases:
        with pytest.raises(hosts.HostError) as e:
            h.sql(sql)
        assert expected in str(e.value), (sql, str(e.value))
    assert h.sql("SELECT count(*) FROM duckdb_tables() WHERE table_name = 'x'")[0][0] == 0
    h.close()
