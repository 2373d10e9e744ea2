"""Flight SQL end to end, with the real ADBC Flight SQL driver (adbc-driver-flightsql, pinned) against DuckDB
hosts loaded with arrowport: bulk ingest in every mode, queries and prepared statements, catalog browsing,
the listener's `sql` setting, tokens. Every outcome is checked in DuckDB itself."""
import threading
import time
import warnings

import adbc_driver_manager
import adbc_driver_flightsql.dbapi as flight_sql
import httpx
import pyarrow as pa
import pyarrow.flight as fl
import pytest

import hosts
from clients import ipc_bytes
from testdata import events
from test_types import COLUMNS

pytestmark = pytest.mark.filterwarnings("ignore:Cannot disable autocommit")

ARROW = "application/vnd.apache.arrow.stream"


class SqlHost:
    def __init__(self, kind, db_path, options=""):
        self.host = hosts.start(kind, db_path)
        self.host.sql(hosts.load_sql())
        self.addr = self.host.sql(f"SELECT address FROM arrowport_listen('127.0.0.1:0'{options})")[0][0]
        self.conns = []

    def connect(self, token=None):
        kwargs = {"adbc.flight.sql.authorization_header": f"Bearer {token}"} if token else {}
        conn = flight_sql.connect(f"grpc://{self.addr}", db_kwargs=kwargs)
        self.conns.append(conn)
        return conn

    def sql(self, q):
        return self.host.sql(q)

    def close(self):
        for c in self.conns:
            try:
                c.close()
            except Exception:
                pass
        try:
            self.host.sql("SELECT arrowport_stop()")
        except Exception:
            pass
        return self.host.close()


@pytest.fixture
def make(tmp_path):
    made = []

    def start(options="", kind="py20", db="sql.duckdb"):
        h = SqlHost(kind, str(tmp_path / db), options)
        made.append(h)
        return h

    yield start
    for h in made:
        rc = h.close()
        assert rc in (0, 1) if h.host.kind == "cli" else rc == 0


def adbc_status(e):
    return getattr(e, "status_code", None)


def query(conn, sql, params=None):
    with conn.cursor() as cur:
        cur.execute(sql, params)
        return cur.fetch_arrow_table()


@pytest.mark.parametrize("kind", ["cli", "py20", "py15"])
def test_ingest_modes_on_fresh_and_existing_tables(make, kind):
    h = make(kind=kind)
    conn = h.connect()
    cur = conn.cursor()
    t = events(5)

    # create: fresh table made from the Arrow schema; an existing one is ALREADY_EXISTS.
    assert cur.adbc_ingest("created", t, mode="create") == 5
    assert h.sql("SELECT column_name, data_type FROM duckdb_columns() WHERE table_name = 'created' ORDER BY column_index") == [
        ("id", "BIGINT"), ("timestamp", "BIGINT"), ("value", "DOUBLE"), ("category", "VARCHAR"), ("metric", "DOUBLE")]
    with pytest.raises(adbc_driver_manager.ProgrammingError) as e:
        cur.adbc_ingest("created", t, mode="create")
    assert adbc_status(e.value) == adbc_driver_manager.AdbcStatusCode.ALREADY_EXISTS
    assert "table main.created already exists (ingest mode create)" in str(e.value)
    assert h.sql("SELECT count(*) FROM created") == [(5,)]

    # append: adds to an existing table; a missing one is NOT_FOUND and nothing is created.
    assert cur.adbc_ingest("created", events(3, start=100), mode="append") == 3
    assert h.sql("SELECT count(*), sum(id)::BIGINT FROM created") == [(8, 10 + 300 + 3)]
    with pytest.raises(adbc_driver_manager.ProgrammingError) as e:
        cur.adbc_ingest("missing", t, mode="append")
    assert adbc_status(e.value) == adbc_driver_manager.AdbcStatusCode.NOT_FOUND
    assert "table main.missing does not exist (ingest mode append does not create it)" in str(e.value)
    assert h.sql("SELECT count(*) FROM duckdb_tables() WHERE table_name = 'missing'") == [(0,)]

    # replace: creates a fresh table; replaces an existing one, schema included.
    assert cur.adbc_ingest("replaced", t, mode="replace") == 5
    other = pa.table({"name": ["x", "y"], "score": pa.array([1.5, 2.5], pa.float32())})
    assert cur.adbc_ingest("replaced", other, mode="replace") == 2
    assert h.sql("SELECT name, score FROM replaced ORDER BY name") == [("x", 1.5), ("y", 2.5)]
    assert h.sql("SELECT data_type FROM duckdb_columns() WHERE table_name = 'replaced' ORDER BY column_index") == [("VARCHAR",), ("FLOAT",)]

    # create_append: creates when missing, appends when present.
    assert cur.adbc_ingest("ca", t, mode="create_append") == 5
    assert cur.adbc_ingest("ca", t, mode="create_append") == 5
    assert h.sql("SELECT count(*) FROM ca") == [(10,)]

    cur.close()

    # Counted in arrowport_metrics() under the flightsql protocol.
    rows = h.sql("SELECT stream, requests_ok, rows_committed FROM arrowport_metrics() WHERE protocol = 'flightsql' ORDER BY stream")
    assert ("created", 2, 8) in rows and ("ca", 2, 10) in rows


def test_ingest_into_other_catalogs_and_schemas(make, tmp_path):
    h = make()
    h.sql(f"ATTACH '{tmp_path / 'other.duckdb'}' AS other")
    h.sql("CREATE SCHEMA other.staging")
    h.sql("CREATE SCHEMA raw")
    conn = h.connect()
    # One cursor per ingest: a cursor keeps the catalog and schema options of its previous ingest.
    with conn.cursor() as cur:
        assert cur.adbc_ingest("ev", events(4), mode="create", catalog_name="other", db_schema_name="staging") == 4
    with conn.cursor() as cur:
        assert cur.adbc_ingest("ev", events(6), mode="create", db_schema_name="raw") == 6
    with conn.cursor() as cur:
        with pytest.raises(adbc_driver_manager.Error) as e:
            cur.adbc_ingest("tmp", events(2), mode="create", temporary=True)
        assert "temporary tables are not available" in str(e.value)
    assert h.sql("SELECT count(*) FROM other.staging.ev") == [(4,)]
    assert h.sql("SELECT count(*) FROM raw.ev") == [(6,)]
    assert h.sql("SELECT count(*) FROM duckdb_tables() WHERE table_name = 'tmp'") == [(0,)]


def test_a_million_rows_in_one_ingest(make):
    h = make()
    conn = h.connect()
    t = events(1_000_000)
    # The Go driver refuses to send one message over 16 MiB, so the client sends the table in batches.
    reader = pa.RecordBatchReader.from_batches(t.schema, t.to_batches(max_chunksize=65_536))
    with conn.cursor() as cur:
        assert cur.adbc_ingest("big", reader, mode="create") == 1_000_000
    assert h.sql("SELECT count(*), sum(id)::BIGINT, count(DISTINCT category) FROM big") == [(1_000_000, sum(range(1_000_000)), 4)]


def test_every_type_round_trips_through_a_query(make):
    h = make(", sql := 'read_only'")
    table = pa.table(COLUMNS)
    r = httpx.post(f"http://{h.addr}/streams/types", content=ipc_bytes(table), headers={"Content-Type": ARROW}, timeout=60)
    assert r.status_code == 200, r.text
    conn = h.connect()
    got = query(conn, "SELECT * FROM types")
    oracle = h.host.arrow("SELECT * FROM types")
    assert got.schema == oracle.schema
    for name in oracle.column_names:
        assert got.column(name).equals(oracle.column(name)), name
    assert got.num_rows == 3


def test_prepared_statements_with_parameters(make):
    h = make(", sql := 'read_write'")
    conn = h.connect()
    with conn.cursor() as cur:
        cur.adbc_ingest("ev", events(100), mode="create")
        cur.execute("SELECT id, category FROM ev WHERE id >= ? AND category = ? ORDER BY id", (90, "c"))
        assert cur.fetchall() == [(90, "c"), (94, "c"), (98, "c")]
        # The same statement again with other values.
        cur.execute("SELECT id, category FROM ev WHERE id >= ? AND category = ? ORDER BY id", (97, "b"))
        assert cur.fetchall() == [(97, "b")]
        cur.execute("SELECT ?::INTEGER + 1 AS x, ? AS y, ?::DATE AS d", (41, "hi", "2024-02-29"))
        t = cur.fetch_arrow_table()
        assert t.to_pylist() == [{"x": 42, "y": "hi", "d": __import__("datetime").date(2024, 2, 29)}]
        assert t.schema.field("x").type == pa.int32()
        cur.execute("CREATE TABLE kv (k INTEGER, v VARCHAR)")
        cur.executemany("INSERT INTO kv VALUES (?, ?)", [(1, "a"), (2, None), (3, "c")])
    assert h.sql("SELECT k, v FROM kv ORDER BY k") == [(1, "a"), (2, None), (3, "c")]


def test_catalog_browsing(make):
    h = make(", sql := 'read_only'")
    h.sql("CREATE SCHEMA s2")
    h.sql("CREATE TABLE s2.t2 (a INTEGER, b VARCHAR)")
    h.sql("CREATE VIEW v1 AS SELECT 1 AS one")
    conn = h.connect()
    with conn.cursor() as cur:
        cur.adbc_ingest("ev", events(3), mode="create")
    objects = conn.adbc_get_objects(depth="all").read_all().to_pylist()
    catalogs = {c["catalog_name"]: c for c in objects}
    assert list(catalogs) == ["sql"]
    schemas = {s["db_schema_name"]: s for s in catalogs["sql"]["catalog_db_schemas"]}
    assert set(schemas) == {"main", "s2"}
    main_tables = {t["table_name"]: t for t in schemas["main"]["db_schema_tables"]}
    assert main_tables["ev"]["table_type"] == "TABLE" and main_tables["v1"]["table_type"] == "VIEW"
    assert [c["column_name"] for c in main_tables["ev"]["table_columns"]] == ["id", "timestamp", "value", "category", "metric"]
    assert [t["table_name"] for t in schemas["s2"]["db_schema_tables"]] == ["t2"]
    assert conn.adbc_get_table_types() == ["TABLE", "VIEW"]
    assert conn.adbc_get_table_schema("t2", db_schema_filter="s2") == pa.schema([("a", pa.int32()), ("b", pa.string())])
    info = conn.adbc_get_info()
    assert info["vendor_name"] == "arrowport" and info["vendor_version"] == "0.1.0"


def test_sql_access_off_read_only_read_write(make):
    off = make(db="off.duckdb")
    conn = off.connect()
    with pytest.raises(adbc_driver_manager.Error) as e:
        query(conn, "SELECT 1")
    assert "SQL statements are off on this listener; start it with sql := 'read_only'" in str(e.value)
    assert adbc_status(e.value) == adbc_driver_manager.AdbcStatusCode.UNAUTHORIZED
    with conn.cursor() as cur:  # ingest still works with SQL off
        assert cur.adbc_ingest("ev", events(2), mode="create") == 2

    ro = make(", sql := 'read_only'", db="ro.duckdb")
    ro.sql("CREATE TABLE t (i INTEGER)")
    ro.sql("INSERT INTO t VALUES (1), (2)")
    ro.sql("CREATE SEQUENCE seq")
    conn = ro.connect()
    assert query(conn, "SELECT sum(i) AS s FROM t").to_pylist() == [{"s": 2 + 1}]
    for statement in ["INSERT INTO t VALUES (3)", "DROP TABLE t", "CREATE TABLE u (i INTEGER)", "UPDATE t SET i = 0"]:
        with pytest.raises(adbc_driver_manager.Error) as e:
            query(conn, statement)
        assert "runs only statements that read (sql := 'read_only')" in str(e.value), statement
    with pytest.raises(adbc_driver_manager.Error) as e:
        query(conn, "SELECT nextval('seq')")
    assert "nextval() changes the database or the session" in str(e.value)
    with pytest.raises(adbc_driver_manager.Error) as e:
        query(conn, "SELECT * FROM arrowport_create_token('sneaky')")
    assert "arrowport_create_token cannot be called over the network" in str(e.value)
    with pytest.raises(adbc_driver_manager.Error) as e:
        query(conn, "SELECT arrowport_stop()")
    assert "arrowport_stop cannot be called over the network" in str(e.value)
    with pytest.raises(adbc_driver_manager.Error) as e:
        query(conn, "BEGIN TRANSACTION")
    assert ro.sql("SELECT count(*) FROM t") == [(2,)]
    assert ro.sql("SELECT count(*) FROM arrowport_tokens()") == [(0,)]
    assert len(ro.sql("FROM arrowport_status()")) == 2

    rw = make(", sql := 'read_write'", db="rw.duckdb")
    conn = rw.connect()
    query(conn, "CREATE TABLE t (i INTEGER)")
    assert query(conn, "INSERT INTO t VALUES (1), (2), (3)").to_pylist() == [{"Count": 3}]
    query(conn, "DELETE FROM t WHERE i = 2")
    assert rw.sql("SELECT list(i ORDER BY i) FROM t") == [([1, 3],)]
    query(conn, "DROP TABLE t")
    assert rw.sql("SELECT count(*) FROM duckdb_tables() WHERE table_name = 't'") == [(0,)]
    with pytest.raises(adbc_driver_manager.Error) as e:
        query(conn, "DETACH arrowport_scratch")
    assert "may not name \"arrowport_scratch\"" in str(e.value)
    for statement, keyword in [("DETACH scratch_alias", "DETACH"), ("ATTACH ':memory:' AS other", "ATTACH"),
                               ("SET threads = 1", "SET"), ("RESET memory_limit", "SET"), ("SET VARIABLE v = 1", "SET"),
                               ("PRAGMA threads = 1", "SET"), ("LOAD json", "LOAD / INSTALL"), ("INSTALL json", "LOAD / INSTALL")]:
        with pytest.raises(adbc_driver_manager.Error) as e:
            query(conn, statement)
        assert f"{keyword} statements are not accepted over the network" in str(e.value), (statement, str(e.value))
    assert rw.sql("SELECT current_setting('threads') > 1") == [(True,)]
    with conn.cursor() as cur:  # the writers are intact
        assert cur.adbc_ingest("after", events(3), mode="create") == 3


def test_bad_sql_is_answered_with_duckdbs_error(make):
    h = make(", sql := 'read_only'")
    conn = h.connect()
    with pytest.raises(adbc_driver_manager.ProgrammingError) as e:
        query(conn, "SELEC 1")
    assert 'Parser Error: syntax error at or near "SELEC"' in str(e.value)
    with pytest.raises(adbc_driver_manager.Error) as e:
        query(conn, "SELECT * FROM no_such_table")
    assert "Catalog Error: Table with name no_such_table does not exist" in str(e.value)
    with pytest.raises(adbc_driver_manager.Error) as e:
        query(conn, "SELECT 1/0::INTEGER, 'x'::INTEGER")
    assert "Conversion Error" in str(e.value)
    # The listener is fine afterwards.
    assert query(conn, "SELECT 42 AS answer").to_pylist() == [{"answer": 42}]


def pb_bytes(field, data):
    """A protobuf length-delimited field."""
    out = bytearray([(field << 3) | 2])
    n = len(data)
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            break
    return bytes(out) + data


def statement_ticket(sql):
    """Any{TicketStatementQuery{statement_handle: sql}}: a ticket that carries SQL text instead of a handle."""
    inner = pb_bytes(1, sql.encode())
    return pb_bytes(1, b"type.googleapis.com/arrow.flight.protocol.sql.TicketStatementQuery") + pb_bytes(2, inner)


def statement_query(sql):
    """Any{CommandStatementQuery{query: sql}}, the descriptor command a Flight SQL client sends."""
    inner = pb_bytes(1, sql.encode())
    return pb_bytes(1, b"type.googleapis.com/arrow.flight.protocol.sql.CommandStatementQuery") + pb_bytes(2, inner)


def test_a_large_result_streams_and_a_client_that_stops_reading_holds_no_writer(make):
    h = make(", sql := 'read_only', stall_timeout := 1")
    # As many clients as the statement pool has connections (4) each read one batch of a large result and stop.
    release = threading.Event()
    first_batches = []
    errors = []

    def stuck_reader():
        c = fl.connect(f"grpc://{h.addr}")
        try:
            info = c.get_flight_info(fl.FlightDescriptor.for_command(statement_query(
                "SELECT range AS n, range * 2 AS m FROM range(200000000)")))
            reader = c.do_get(info.endpoints[0].ticket)
            first_batches.append(reader.read_chunk().data.num_rows)
            release.wait(60)
        except Exception as e:  # noqa: BLE001
            errors.append(e)
        finally:
            c.close()

    readers = [threading.Thread(target=stuck_reader) for _ in range(4)]
    for r in readers:
        r.start()
    for _ in range(400):
        if len(first_batches) + len(errors) == 4:
            break
        time.sleep(0.05)
    assert len(first_batches) == 4, errors
    # Statements never hold an ingest writer: ingest lands while every statement connection waits on a reader.
    r = httpx.post(f"http://{h.addr}/streams/after", content=ipc_bytes(events(10)), headers={"Content-Type": ARROW}, timeout=20)
    assert r.status_code == 200, r.text
    release.set()
    for t in readers:
        t.join(30)
    assert h.sql("SELECT count(*) FROM after") == [(10,)]
    # After stall_timeout the statements gave up: the pool serves again.
    conn = h.connect()
    assert query(conn, "SELECT 7 AS x").to_pylist() == [{"x": 7}]
    # A ticket is a handle this listener gave out, never SQL text.
    c = fl.connect(f"grpc://{h.addr}")
    with pytest.raises((fl.FlightError, pa.ArrowKeyError)) as e:
        c.do_get(fl.Ticket(statement_ticket("SELECT 1"))).read_all()
    assert "no such statement handle" in str(e.value), e.value


def test_flight_sql_follows_tokens_and_scopes(make):
    h = make(", auth := 'token', sql := 'read_only'")
    admin = h.sql("SELECT token FROM arrowport_create_token('admin')")[0][0]
    etl = h.sql("SELECT token FROM arrowport_create_token('etl', streams := ['events'])")[0][0]

    with pytest.raises(adbc_driver_manager.Error) as e:
        with h.connect().cursor() as cur:
            cur.adbc_ingest("events", events(2), mode="create")
    assert adbc_status(e.value) == adbc_driver_manager.AdbcStatusCode.UNAUTHENTICATED

    conn = h.connect(etl)
    with conn.cursor() as cur:
        assert cur.adbc_ingest("events", events(3), mode="create_append") == 3
        with pytest.raises(adbc_driver_manager.Error) as e:
            cur.adbc_ingest("orders", events(3), mode="create")
        assert 'token "etl" is not allowed to use stream "orders"' in str(e.value)
        assert adbc_status(e.value) == adbc_driver_manager.AdbcStatusCode.UNAUTHORIZED
        with pytest.raises(adbc_driver_manager.Error) as e:
            cur.adbc_ingest("events", events(3), mode="create_append", db_schema_name="other")
        assert "cannot name its own target table" in str(e.value)
    with pytest.raises(adbc_driver_manager.Error) as e:
        query(conn, "SELECT * FROM events")
    assert "a token limited to streams cannot run SQL statements" in str(e.value)

    conn = h.connect(admin)
    assert query(conn, "SELECT count(*) AS n FROM events").to_pylist() == [{"n": 3}]
    assert h.sql("SELECT count(*) FROM duckdb_tables() WHERE table_name = 'orders'") == [(0,)]
