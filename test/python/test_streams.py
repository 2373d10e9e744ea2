"""Stream mappings on a live listener: policies, modes, targets in other catalogs, changes while a client
sends, persistence across a restart, and refusing unknown streams."""
import json
import os
import re
import threading

import duckdb
import httpx
import pyarrow as pa
import pyarrow.flight as fl
import pytest

import hosts
from clients import flight_put, ipc_bytes

ARROW = "application/vnd.apache.arrow.stream"


def rest(listening, name, table):
    return httpx.post(f"http://{listening.addr}/streams/{name}", content=ipc_bytes(table), headers={"Content-Type": ARROW}, timeout=60)


def flight(listening, name, table):
    return flight_put(listening.addr, name, table)


def test_by_name_matches_columns_in_any_order(py_listening):
    py_listening.sql("CREATE TABLE t (id BIGINT, v DOUBLE, note VARCHAR)")
    py_listening.sql("CALL arrowport_create_stream('s', target := 't', schema_policy := 'by_name')")
    r = rest(py_listening, "s", pa.table({"v": [1.5, 2.5], "id": pa.array([1, 2], pa.int64())}))
    assert r.status_code == 200, r.text
    assert py_listening.sql("SELECT id, v, note FROM t ORDER BY id") == [(1, 1.5, None), (2, 2.5, None)]
    r = rest(py_listening, "s", pa.table({"id": pa.array([3], pa.int64()), "extra": [1]}))
    assert r.status_code == 409 and 'column "extra" is not in the table' in r.json()["error"]["message"]
    assert py_listening.count("t") == 2


def test_evolve_adds_new_columns_in_the_same_transaction(py_listening):
    py_listening.sql("CREATE TABLE t (id BIGINT)")
    py_listening.sql("INSERT INTO t VALUES (1)")
    py_listening.sql("CALL arrowport_create_stream('s', target := 't', schema_policy := 'evolve')")
    assert flight(py_listening, "s", pa.table({"id": pa.array([2], pa.int64()), "city": ["Oslo"], "n": pa.array([7], pa.int32())}))["rows"] == 1
    assert py_listening.sql("SELECT column_name, data_type FROM duckdb_columns() WHERE table_name = 't' ORDER BY column_index") == [
        ("id", "BIGINT"), ("city", "VARCHAR"), ("n", "INTEGER")]
    assert py_listening.sql("SELECT id, city, n FROM t ORDER BY id") == [(1, None, None), (2, "Oslo", 7)]
    # A failing request adds nothing: the ALTER rolls back with it.
    py_listening.sql("CREATE UNIQUE INDEX t_id ON t (id)")
    with pytest.raises(pa.ArrowException):
        flight(py_listening, "s", pa.table({"id": pa.array([2], pa.int64()), "late": [1]}))
    assert [c for (c,) in py_listening.sql("SELECT column_name FROM duckdb_columns() WHERE table_name = 't'")] == ["id", "city", "n"]


def test_replace_swaps_the_rows_atomically(py_listening):
    py_listening.sql("CREATE TABLE snap (id BIGINT PRIMARY KEY)")
    py_listening.sql("INSERT INTO snap VALUES (1), (2), (3)")
    py_listening.sql("CALL arrowport_create_stream('snap', mode := 'replace')")
    assert rest(py_listening, "snap", pa.table({"id": pa.array([10, 11], pa.int64())})).status_code == 200
    assert py_listening.sql("SELECT id FROM snap ORDER BY id") == [(10,), (11,)]
    # A replacement that fails keeps the old rows.
    assert rest(py_listening, "snap", pa.table({"id": pa.array([5, 5], pa.int64())})).status_code == 409
    assert py_listening.sql("SELECT id FROM snap ORDER BY id") == [(10,), (11,)]
    # An empty replacement empties the table.
    r = rest(py_listening, "snap", pa.table({"id": pa.array([], pa.int64())}))
    assert r.status_code == 200 and r.json()["rows"] == 0
    assert py_listening.count("snap") == 0


def test_create_table_false_refuses_a_missing_target(py_listening):
    py_listening.sql("CALL arrowport_create_stream('strict_only', target := 'nowhere', create_table := false)")
    r = rest(py_listening, "strict_only", pa.table({"a": [1]}))
    assert r.status_code == 404
    assert "table main.nowhere does not exist" in r.json()["error"]["message"]
    with pytest.raises(pa.ArrowException) as e:
        flight(py_listening, "strict_only", pa.table({"a": [1]}))
    assert "does not exist" in str(e.value)


def test_duckdbs_own_catalogs_are_not_targets_and_a_target_that_rejects_data_is_a_client_error(py_listening):
    for target in ["temp.main.x", "system.main.x"]:
        with pytest.raises(hosts.HostError, match="is DuckDB's own"):
            py_listening.sql(f"CALL arrowport_create_stream('t_{target[:4]}', target := '{target}')")
    # DuckDB's refusal of the data (a CHECK here) is classified by its error type: 409, not 500.
    py_listening.sql("CREATE TABLE checked (a BIGINT CHECK (a > 0))")
    py_listening.sql("CALL arrowport_create_stream('checked', target := 'checked')")
    r = rest(py_listening, "checked", pa.table({"a": pa.array([-1], pa.int64())}))
    assert r.status_code == 409 and r.json()["error"]["code"] == "schema_conflict", r.text
    assert r.json()["error"]["message"].startswith("Constraint Error: CHECK constraint failed"), r.text
    assert py_listening.count("checked") == 0


def test_targets_in_another_catalog_with_identifiers_that_need_quotes(py_listening, tmp_path):
    other = tmp_path / "other.duckdb"
    py_listening.sql(f"ATTACH '{other}' AS \"Other Db\"")
    py_listening.sql('CREATE SCHEMA "Other Db"."Select"')
    py_listening.sql("""CALL arrowport_create_stream('x', target := '"Other Db"."Select"."Table Name"')""")
    assert flight(py_listening, "x", pa.table({"Group": [1, 2]}))["table"] == "Other Db.Select.Table Name"
    assert py_listening.sql('SELECT sum("Group")::BIGINT FROM "Other Db"."Select"."Table Name"') == [(3,)]


def test_a_change_while_a_client_sends_applies_to_the_next_request(py_listening):
    py_listening.sql("CALL arrowport_create_stream('moving', target := 'first')")
    t = pa.table({"id": pa.array(range(100), pa.int64())})
    c = fl.connect(f"grpc://{py_listening.addr}")
    w, r = c.do_put(fl.FlightDescriptor.for_path("moving"), t.schema)
    w.write_table(t)
    py_listening.sql("CALL arrowport_alter_stream('moving', target := 'second')")
    w.write_table(t)
    w.done_writing()
    assert json.loads(r.read().to_pybytes())["table"] == "main.first"
    w.close()
    assert flight(py_listening, "moving", t)["table"] == "main.second"
    assert (py_listening.count("first"), py_listening.count("second")) == (200, 100)


def test_mappings_survive_a_restart(host_kind, db_path):
    host = hosts.start(host_kind, db_path)
    host.sql(hosts.load_sql())
    host.sql("CALL arrowport_create_stream('kept', target := 'landing', schema_policy := 'by_name')")
    assert host.close() == 0
    host = hosts.start(host_kind, db_path)
    try:
        host.sql(hosts.load_sql())
        assert host.sql("FROM arrowport_streams()") == [("kept", "main.landing", True, "by_name", "append", [], "error", None, False)]
        addr = host.sql("SELECT arrowport_listen('127.0.0.1:0')")[0][0]
        r = httpx.post(f"http://{addr}/streams/kept", content=ipc_bytes(pa.table({"a": [1, 2]})), headers={"Content-Type": ARROW})
        assert r.status_code == 200 and r.json()["table"] == "main.landing"
        assert host.sql("SELECT count(*) FROM landing") == [(2,)]
        host.sql("SELECT arrowport_stop()")
    finally:
        host.close()


def test_tokens_are_stored_as_salted_hashes_in_arrowports_own_file(db_path):
    host = hosts.start("py20", db_path)
    host.sql(hosts.load_sql())
    secret = host.sql("SELECT token FROM arrowport_create_token('etl', streams := ['a'])")[0][0]
    host.sql("CALL arrowport_create_stream('kept', target := 'landing')")
    assert host.sql("SELECT count(*) FROM duckdb_tables() WHERE schema_name = 'arrowport'") == [(0,)]
    assert host.close() == 0
    own = duckdb.connect(db_path + ".arrowport", read_only=True)
    try:
        rows = own.sql("SELECT name, salt, hash, streams FROM arrowport.tokens").fetchall()
        assert [(r[0], r[3]) for r in rows] == [("etl", '["a"]')]
        assert re.fullmatch("[0-9a-f]{32}", rows[0][1]) and re.fullmatch("[0-9a-f]{64}", rows[0][2])
        assert secret not in str(own.sql("FROM arrowport.tokens").fetchall())
        assert own.sql("SELECT stream, \"table\" FROM arrowport.streams").fetchall() == [("kept", "landing")]
    finally:
        own.close()
    with open(db_path, "rb") as f:
        assert secret.encode() not in f.read()


def test_mappings_and_tokens_of_the_older_layout_move_out_of_the_host_database(db_path):
    """Tables an older layout kept in the host database (arrowport.streams, arrowport.tokens) are moved into
    arrowport's own database when it is first opened, and dropped from the host."""
    host = hosts.start("py20", db_path)
    host.sql(hosts.load_sql())
    secret = host.sql("SELECT token FROM arrowport_create_token('etl')")[0][0]
    host.sql("CALL arrowport_create_stream('old', target := 'landing', schema_policy := 'by_name')")
    assert host.close() == 0
    own = duckdb.connect(db_path + ".arrowport")
    tokens = own.sql("FROM arrowport.tokens").fetch_arrow_table()
    streams = own.sql("FROM arrowport.streams").fetch_arrow_table()
    own.close()
    os.remove(db_path + ".arrowport")
    old = duckdb.connect(db_path)  # the older layout: the same tables inside the host database
    old.sql("CREATE SCHEMA arrowport")
    old.register("t", tokens)
    old.register("s", streams)
    old.sql("CREATE TABLE arrowport.tokens AS FROM t")
    old.sql("CREATE TABLE arrowport.streams AS FROM s")
    old.close()
    host = hosts.start("py20", db_path)
    try:
        host.sql(hosts.load_sql())
        assert host.sql("FROM arrowport_streams()") == [("old", "main.landing", True, "by_name", "append", [], "error", None, False)]
        addr = host.sql("SELECT address FROM arrowport_listen('127.0.0.1:0', auth := 'token')")[0][0]
        r = httpx.post(f"http://{addr}/streams/old", content=ipc_bytes(pa.table({"a": [1, 2]})),
                       headers={"Content-Type": ARROW, "Authorization": f"Bearer {secret}"})
        assert r.status_code == 200, r.text
        assert host.sql("SELECT count(*) FROM duckdb_tables() WHERE schema_name = 'arrowport'") == [(0,)]
        host.sql("SELECT arrowport_stop()")
    finally:
        host.close()
    assert os.path.exists(db_path + ".arrowport")


def test_unknown_streams_can_be_refused(db_path):
    host = hosts.start("py20", db_path)
    try:
        host.sql(hosts.load_sql())
        host.sql("CALL arrowport_create_stream('known')")
        addr = dict(host.sql("FROM arrowport_listen('127.0.0.1:0', unknown_streams := 'reject')"))["rest"]
        r = httpx.post(f"http://{addr}/streams/stranger", content=ipc_bytes(pa.table({"a": [1]})), headers={"Content-Type": ARROW})
        assert r.status_code == 404 and "unknown stream \"stranger\"" in r.json()["error"]["message"]
        c = fl.connect(f"grpc://{addr}")
        t = pa.table({"a": [1]})
        with pytest.raises(pa.ArrowException) as e:
            w, rd = c.do_put(fl.FlightDescriptor.for_path("stranger"), t.schema)
            w.write_table(t)
            w.done_writing()
            rd.read()
            w.close()
        assert "unknown stream" in str(e.value)
        r = httpx.post(f"http://{addr}/streams/known", content=ipc_bytes(t), headers={"Content-Type": ARROW})
        assert r.status_code == 200
        assert host.sql("SELECT count(*) FROM duckdb_tables() WHERE table_name = 'stranger'") == [(0,)]
    finally:
        host.sql("SELECT arrowport_stop()")
        assert host.close() == 0


def test_listings_show_mappings_and_their_tables(py_listening):
    base = f"http://{py_listening.addr}"
    py_listening.sql("CALL arrowport_create_stream('events', target := 'landing', schema_policy := 'by_name')")
    r = httpx.get(f"{base}/streams/events")
    assert r.status_code == 200
    info = r.json()
    assert (info["mapping"], info["target"], info["schema_policy"], info["schema"]) == ("defined", "main.landing", "by_name", None)
    assert rest(py_listening, "events", pa.table({"id": pa.array([1, 2], pa.int64())})).status_code == 200
    info = httpx.get(f"{base}/streams/events").json()
    assert info["schema"] == [{"name": "id", "type": "Int64", "nullable": True}]
    assert info["counters"] == {"requests_ok": 1, "requests_failed": 0, "rows": 2, "batches": 1}
    listed = {s["stream"]: (s["mapping"], s["target"]) for s in httpx.get(f"{base}/streams").json()["streams"]}
    assert listed == {"events": ("defined", "main.landing"), "landing": ("default", "main.landing")}
    c = fl.connect(f"grpc://{py_listening.addr}")
    flights = {f.descriptor.path[0].decode(): f.schema.names for f in c.list_flights()}
    assert flights == {"events": ["id"], "landing": ["id"]}
    assert c.get_schema(fl.FlightDescriptor.for_path("events")).schema.names == ["id"]
