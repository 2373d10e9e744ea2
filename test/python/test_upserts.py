"""Streams that merge on a key (`key`, `on_conflict`, `delete_column`): options and their checks, the semantics
of a request (rows apply in order; the last wins; a delete then an insert re-inserts), bad input that changes
nothing, exactly-once keys, concurrent producers, and a differential test: random insert/update/delete requests
sent over Flight, REST and ADBC, against the same rows applied one by one in plain DuckDB SQL in-process."""
import random
import threading
import uuid

import adbc_driver_flightsql.dbapi as flight_sql
import httpx
import pyarrow as pa
import pytest

from clients import flight_put, ipc_bytes
from test_types import COLUMNS

ARROW = "application/vnd.apache.arrow.stream"
pytestmark = pytest.mark.filterwarnings("ignore:Cannot disable autocommit")


def rest(listening, name, table, key=None):
    headers = {"Content-Type": ARROW}
    if key:
        headers["Idempotency-Key"] = key
    return httpx.post(f"http://{listening.addr}/streams/{name}", content=ipc_bytes(table), headers=headers, timeout=60)


def users(ids, names, deleted=None):
    cols = {"user_id": pa.array(ids, pa.int64()), "name": pa.array(names, pa.string())}
    if deleted is not None:
        cols["_deleted"] = pa.array(deleted, pa.bool_())
    return pa.table(cols)


def test_update_insert_and_delete_in_one_request_apply_in_order(listening):
    h = listening
    h.sql("CREATE TABLE users (user_id BIGINT PRIMARY KEY, name VARCHAR, city VARCHAR DEFAULT 'nowhere')")
    h.sql("INSERT INTO users VALUES (1, 'ann', 'Oslo'), (2, 'bob', 'Rome'), (3, 'cy', 'Lima')")
    out = h.sql("SELECT stream, key, on_conflict, delete_column, schema_policy FROM arrowport_create_stream('users', "
                "on_conflict := 'update', delete_column := '_deleted', schema_policy := 'by_name')")
    # The table's PRIMARY KEY is the key when the mapping names none, and the mapping keeps it.
    assert out == [("users", ["user_id"], "update", "_deleted", "by_name")]
    r = rest(h, "users", users(
        [1, 2, 4, 4, 3, 3, 5, 5],
        ["ANN", None, "dee", "DEE", "x", "cy again", "gone", "gone"],
        [False, True, False, False, True, False, False, True]))
    assert r.status_code == 200, r.text
    assert r.json()["rows"] == 8
    # 1 updated (city kept: a partial update touches the columns it carries); 2 deleted; 4 inserted, the last
    # row wins; 3 deleted then re-inserted whole (its city the default); 5 inserted then deleted.
    assert h.sql("SELECT user_id, name, city FROM users ORDER BY user_id") == [
        (1, "ANN", "Oslo"), (3, "cy again", "nowhere"), (4, "DEE", "nowhere")]
    # Over Flight, a request without the delete column: updates and inserts.
    assert flight_put(h.addr, "users", users([4, 6], ["dee 3", "fay"]))["rows"] == 2
    assert h.sql("SELECT user_id, name FROM users ORDER BY user_id") == [(1, "ANN"), (3, "cy again"), (4, "dee 3"), (6, "fay")]


def test_ignore_keeps_the_row_already_there(py_listening):
    h = py_listening
    h.sql("CREATE TABLE dim (code VARCHAR, label VARCHAR)")
    h.sql("INSERT INTO dim VALUES ('a', 'first')")
    h.sql("CALL arrowport_create_stream('dim', key := ['code'], on_conflict := 'ignore')")
    t = pa.table({"code": ["a", "b", "b", "c"], "label": ["second", "b1", "b2", "c1"]})
    assert flight_put(h.addr, "dim", t)["rows"] == 4
    assert h.sql("SELECT code, label FROM dim ORDER BY code") == [("a", "first"), ("b", "b1"), ("c", "c1")]


def test_options_are_checked_against_the_table_and_shown(py_listening):
    h = py_listening
    h.sql("CREATE TABLE t (id BIGINT, v VARCHAR)")
    h.sql("CREATE TABLE pk2 (a INTEGER, b VARCHAR, v DOUBLE, PRIMARY KEY (a, b))")
    with pytest.raises(Exception, match=r"key column \"nope\" is not a column of table main.t"):
        h.sql("CALL arrowport_create_stream('s1', target := 't', key := ['nope'], on_conflict := 'update')")
    with pytest.raises(Exception, match=r"names none and table main.t has no PRIMARY KEY"):
        h.sql("CALL arrowport_create_stream('s1', target := 't', on_conflict := 'update')")
    with pytest.raises(Exception, match=r"delete_column \"v\" is a column of table main.t"):
        h.sql("CALL arrowport_create_stream('s1', target := 't', key := ['id'], delete_column := 'v')")
    with pytest.raises(Exception, match=r"does not go with on_conflict"):
        h.sql("CALL arrowport_create_stream('s1', target := 't', key := ['id'], on_conflict := 'update', mode := 'replace')")
    with pytest.raises(Exception, match=r"allowed: error, ignore, update"):
        h.sql("CALL arrowport_create_stream('s1', target := 't', key := ['id'], on_conflict := 'upsert')")
    assert h.sql("SELECT count(*) FROM arrowport_streams()") == [(0,)]
    h.sql("CALL arrowport_create_stream('s2', target := 'pk2', on_conflict := 'update')")
    h.sql("CALL arrowport_create_stream('plain', target := 't')")
    assert h.sql("SELECT stream, key, on_conflict, delete_column FROM arrowport_streams() ORDER BY stream") == [
        ("plain", [], "error", None), ("s2", ["a", "b"], "update", None)]
    # alter changes them; an empty delete_column takes it away.
    h.sql("CALL arrowport_alter_stream('s2', on_conflict := 'ignore', delete_column := 'gone')")
    assert h.sql("SELECT on_conflict, delete_column FROM arrowport_streams() WHERE stream = 's2'") == [("ignore", "gone")]
    h.sql("CALL arrowport_alter_stream('s2', delete_column := '')")
    assert h.sql("SELECT on_conflict, delete_column FROM arrowport_streams() WHERE stream = 's2'") == [("ignore", None)]
    # A target that does not exist yet is checked at its first request.
    h.sql("CALL arrowport_create_stream('later', target := 'later_t', on_conflict := 'update')")
    r = rest(h, "later", pa.table({"id": [1]}))
    assert r.status_code == 409 and "names none and table main.later_t has no PRIMARY KEY" in r.json()["error"]["message"]
    h.sql("CALL arrowport_alter_stream('later', key := ['id'])")
    assert rest(h, "later", pa.table({"id": [1, 1], "x": ["a", "b"]})).status_code == 200
    assert h.sql("SELECT id, x FROM later_t") == [(1, "b")]


def test_options_survive_a_restart(tmp_path):
    import hosts
    db = str(tmp_path / "keep.duckdb")
    host = hosts.start("py20", db)
    host.sql(hosts.load_sql())
    host.sql("CREATE TABLE u (id UUID PRIMARY KEY, n INTEGER)")
    host.sql("CALL arrowport_create_stream('u', on_conflict := 'update', delete_column := 'del')")
    host.sql("SELECT arrowport_stop()")
    assert host.close() == 0
    host = hosts.start("py20", db)
    try:
        host.sql(hosts.load_sql())
        assert host.sql("SELECT key, on_conflict, delete_column FROM arrowport_streams()") == [(["id"], "update", "del")]
    finally:
        host.close()


def test_bad_requests_are_refused_and_change_nothing(py_listening):
    h = py_listening
    h.sql("CREATE TABLE users (user_id BIGINT PRIMARY KEY, name VARCHAR)")
    h.sql("INSERT INTO users VALUES (1, 'ann')")
    h.sql("CALL arrowport_create_stream('users', on_conflict := 'update', delete_column := '_deleted')")
    before = h.sql("SELECT * FROM users")

    def refused(table, status, text):
        r = rest(h, "users", table)
        assert r.status_code == status, r.text
        assert text in r.json()["error"]["message"], r.text
        with pytest.raises(pa.ArrowException, match=text.replace("(", r"\(").replace(")", r"\)")):
            flight_put(h.addr, "users", table)
        assert h.sql("SELECT * FROM users") == before

    refused(pa.table({"name": ["x"]}), 400, 'merges rows on key ("user_id"): the request has no column "user_id"')
    refused(users([1, None], ["a", "b"]), 400, 'key column "user_id" is NULL in a row')
    refused(pa.table({"user_id": ["1"], "name": ["x"]}), 409, 'column "user_id" is BIGINT in the table but VARCHAR in the stream')
    refused(pa.table({"user_id": pa.array([1], pa.int64()), "name": ["x"], "_deleted": [1]}), 400,
            'delete_column "_deleted" is BIGINT in the request; it must be BOOLEAN')
    refused(pa.table({"user_id": pa.array([2], pa.int64()), "arrowport_ord": [1]}), 400, "a name arrowport uses")
    # A NULL key in a later batch of a streamed request: what came before it is rolled back too.
    big = users(list(range(10, 20_010)) + [None], ["n"] * 20_001)
    r = rest(h, "users", big)
    assert r.status_code == 400 and "is NULL in a row" in r.json()["error"]["message"]
    assert h.sql("SELECT * FROM users") == before


def test_a_replayed_request_changes_nothing(py_listening):
    h = py_listening
    h.sql("CREATE TABLE users (user_id BIGINT PRIMARY KEY, name VARCHAR)")
    h.sql("CALL arrowport_create_stream('users', on_conflict := 'update', delete_column := '_deleted')")
    assert rest(h, "users", users([1, 2], ["a", "b"]), key="k1").status_code == 200
    assert rest(h, "users", users([1], ["A"]), key="k2").status_code == 200
    # The first request again, under its key: answered, not applied (1 stays 'A').
    r = rest(h, "users", users([1, 2], ["a", "b"]), key="k1")
    assert r.status_code == 200 and r.json()["rows"] == 2
    assert h.sql("SELECT user_id, name FROM users ORDER BY 1") == [(1, "A"), (2, "b")]
    ack = flight_put(h.addr, "users", users([2], [None], [True]), key="k3")
    assert flight_put(h.addr, "users", users([2], [None], [True]), key="k3") == {**ack, "replayed": True}
    assert h.sql("SELECT user_id, name FROM users ORDER BY 1") == [(1, "A")]


def test_concurrent_producers_on_different_keys(py_listening):
    h = py_listening
    h.sql("CREATE TABLE state (device VARCHAR PRIMARY KEY, reading BIGINT, step BIGINT)")
    h.sql("CALL arrowport_create_stream('state', on_conflict := 'update')")
    errors = []

    def producer(p):
        try:
            for i in range(25):
                t = pa.table({"device": [f"d{p}-{k}" for k in range(20)], "reading": pa.array([i * 100 + k for k in range(20)], pa.int64()),
                              "step": pa.array([i] * 20, pa.int64())})
                if i % 2:
                    assert flight_put(h.addr, "state", t)["rows"] == 20
                else:
                    r = rest(h, "state", t)
                    assert r.status_code == 200, r.text
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=producer, args=(p,)) for p in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert h.sql("SELECT count(*), min(step), max(step), sum(reading) FROM state") == [(120, 24, 24, 6 * sum(2400 + k for k in range(20)))]


# ---- differential ---------------------------------------------------------------------------------------------

KEY_KINDS = {
    "bigint": [("k", pa.int64())],
    "varchar": [("k", pa.string())],
    "uuid": [("k", pa.uuid())],
    "composite": [("k1", pa.int64()), ("k2", pa.string())],
}
VALUE_COLUMNS = [c for c in COLUMNS if c != "null"] + ["null"]


def key_values(kind, n, rng):
    pool = 12
    picks = [rng.randrange(pool) for _ in range(n)]
    if kind == "bigint":
        return {"k": pa.array([p * 1_000_003 - 5 for p in picks], pa.int64())}
    if kind == "varchar":
        return {"k": pa.array([f"key-{p}-ü" for p in picks], pa.string())}
    if kind == "uuid":
        return {"k": pa.ExtensionArray.from_storage(pa.uuid(), pa.array([uuid.UUID(int=p * 7919 + 1).bytes for p in picks], pa.binary(16)))}
    return {"k1": pa.array([p % 4 for p in picks], pa.int64()), "k2": pa.array([f"s{p // 4}" for p in picks], pa.string())}


def request(kind, rng, n, partial, value_columns=VALUE_COLUMNS):
    cols = key_values(kind, n, rng)
    names = value_columns if not partial else rng.sample(value_columns, rng.randrange(1, 8))
    for name in names:
        src = COLUMNS[name]
        cols[name] = pa.concat_arrays([src.slice(rng.randrange(3), 1) for _ in range(n)])
    cols["_deleted"] = pa.array([rng.random() < 0.2 for _ in range(n)], pa.bool_())
    return pa.table(cols)


def key_names(kind):
    return [n for n, _ in KEY_KINDS[kind]]


def land_raw(h, step, req):
    """The request as it is, appended to `raw` (with its step and row order): the reference's input, landed
    with the host's own types."""
    with_order = req.append_column("step", pa.array([step] * req.num_rows, pa.int64()))
    with_order = with_order.append_column("ord", pa.array(range(req.num_rows), pa.int64()))
    assert flight_put(h.addr, "raw", with_order)["rows"] == req.num_rows


def apply_in_host(h, table_name, step, req, keys, on_conflict, raw="raw"):
    """The reference: each row of the request applied alone, in order, in plain DuckDB SQL in the host's own
    session, from the rows `land_raw` appended."""
    carried = [c for c in req.column_names if c != "_deleted" and c not in keys]
    cols = ", ".join(f'"{c}"' for c in req.column_names if c != "_deleted")
    match = " AND ".join(f't."{k}" = r."{k}"' for k in keys)
    for i in range(req.num_rows):
        row = f"r.step = {step} AND r.ord = {i}"
        h.sql(f"DELETE FROM {table_name} t USING {raw} r WHERE {row} AND r._deleted AND {match}")
        if on_conflict == "update" and carried:
            sets = ", ".join(f'"{c}" = r."{c}"' for c in carried)
            h.sql(f"UPDATE {table_name} t SET {sets} FROM {raw} r WHERE {row} AND NOT r._deleted AND {match}")
        h.sql(f"INSERT INTO {table_name} ({cols}) SELECT {cols} FROM {raw} r WHERE {row} AND NOT r._deleted "
              f"AND NOT EXISTS (SELECT 1 FROM {table_name} t WHERE {match})")


def rows_of(run, table_name, keys, columns):
    order = ", ".join(f'"{k}"' for k in keys)
    cols = ", ".join(f'"{c}"::VARCHAR' for c in columns)
    return run(f"SELECT {cols} FROM {table_name} ORDER BY {order}")


def shaped_tables(h, full, raw="raw"):
    """The host's DDL for a full request's columns (without the delete column), and the `raw` table."""
    assert flight_put(h.addr, "shape", full.drop_columns(["_deleted"]))["rows"] == full.num_rows
    types = h.sql("SELECT column_name, data_type FROM duckdb_columns() WHERE table_name = 'shape' ORDER BY column_index")
    h.sql(f"CREATE TABLE {raw} AS SELECT *, false AS _deleted, 0::BIGINT AS step, 0::BIGINT AS ord FROM shape LIMIT 0")
    h.sql(f"CALL arrowport_create_stream('raw', target := '{raw}', schema_policy := 'by_name')")
    return [name for name, _ in types], ", ".join(f'"{name}" {typ}' for name, typ in types)


@pytest.mark.parametrize("kind,host_kind", [("bigint", "py15"), ("varchar", "py20"), ("uuid", "cli"), ("composite", "py15")])
def test_differential_against_plain_duckdb(kind, host_kind, db_path):
    from conftest import _listening
    listening = _listening(host_kind, db_path)
    try:
        differential(next(listening), kind)
    finally:
        next(listening, None)


def differential(h, kind):
    rng = random.Random(f"upsert-{kind}")
    keys = key_names(kind)
    columns, ddl = shaped_tables(h, request(kind, rng, 3, partial=False))
    key_list = "[" + ", ".join(f"'{k}'" for k in keys) + "]"
    for on_conflict in ["update", "ignore"]:
        h.sql(f"CREATE TABLE ref_{on_conflict} ({ddl})")
    tables = []
    for protocol in ["flight", "rest", "adbc"]:
        for constrained in [True, False]:
            for on_conflict in (["update", "ignore"] if protocol == "flight" else ["update"]):
                name = f"{protocol}_{'pk' if constrained else 'free'}_{on_conflict}"
                pk = f", PRIMARY KEY ({', '.join(keys)})" if constrained else ""
                h.sql(f"CREATE TABLE {name} ({ddl}{pk})")
                key_opt = "" if constrained else f", key := {key_list}"
                h.sql(f"CALL arrowport_create_stream('{name}', on_conflict := '{on_conflict}', delete_column := '_deleted', "
                      f"schema_policy := 'by_name'{key_opt})")
                tables.append((protocol, name, on_conflict))
    adbc = flight_sql.connect(f"grpc://{h.addr}")
    try:
        for step in range(10):
            req = request(kind, rng, rng.randrange(1, 30), partial=step % 3 == 2)
            for protocol, name, on_conflict in tables:
                if protocol == "flight":
                    assert flight_put(h.addr, name, req)["rows"] == req.num_rows
                elif protocol == "rest":
                    r = rest(h, name, req)
                    assert r.status_code == 200, r.text
                else:
                    with adbc.cursor() as cur:
                        assert cur.adbc_ingest(name, req, mode="append") == req.num_rows
            land_raw(h, step, req)
            for on_conflict in ["update", "ignore"]:
                apply_in_host(h, f"ref_{on_conflict}", step, req, keys, on_conflict)
    finally:
        adbc.close()
    for _, name, on_conflict in tables:
        want = rows_of(h.sql, f"ref_{on_conflict}", keys, columns)
        assert len(want) > 0, name
        assert rows_of(h.sql, name, keys, columns) == want, name


def test_kills_with_keyed_retries_leave_exactly_the_sequence_applied(tmp_path):
    """Two producers on their own keys send upserts and deletes under idempotency keys, retrying each request
    until it is acknowledged, while the host is killed with SIGKILL and restarted: the table ends as the
    requests applied once each, in each producer's order."""
    import time
    import hosts
    db = str(tmp_path / "kill.duckdb")
    state = {"host": None, "addr": None}
    up = threading.Event()

    def start():
        h = hosts.start("py20", db)
        h.sql(hosts.load_sql())
        state["addr"] = h.sql("SELECT address FROM arrowport_listen('127.0.0.1:0')")[0][0]
        state["host"] = h
        up.set()
        return h

    h = start()
    h.sql("CREATE TABLE state (device BIGINT PRIMARY KEY, v BIGINT, note VARCHAR)")
    h.sql("CALL arrowport_create_stream('state', on_conflict := 'update', delete_column := '_deleted')")
    model = {}
    errors = []

    def producer(p):
        rng = random.Random(p)
        try:
            for q in range(40):
                n = rng.randrange(1, 2_000)
                devices = [p * 1_000_000 + rng.randrange(300) for _ in range(n)]
                deleted = [rng.random() < 0.15 for _ in range(n)]
                t = pa.table({"device": pa.array(devices, pa.int64()), "v": pa.array([q * 10_000 + i for i in range(n)], pa.int64()),
                              "note": [f"p{p} q{q}"] * n, "_deleted": deleted})
                for attempt in range(300):
                    up.wait(30)
                    try:
                        if q % 2:
                            ack = flight_put(state["addr"], "state", t, key=f"p{p}-q{q}", timeout=30)
                        else:
                            r = rest(type("L", (), {"addr": state["addr"]}), "state", t, key=f"p{p}-q{q}")
                            if r.status_code != 200:
                                raise RuntimeError(r.text)
                            ack = r.json()
                        assert ack["rows"] == n
                        break
                    except (pa.ArrowException, httpx.HTTPError, RuntimeError, OSError):
                        time.sleep(0.05)
                else:
                    raise AssertionError(f"p{p} q{q} was never acknowledged")
                for d, v, gone in zip(devices, t.column("v").to_pylist(), deleted):
                    if gone:
                        model.pop(d, None)
                    else:
                        model[d] = (v, f"p{p} q{q}")
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    producers = [threading.Thread(target=producer, args=(p,)) for p in range(2)]
    for t in producers:
        t.start()
    kills = 0
    rng = random.Random("killer")
    while any(t.is_alive() for t in producers) and kills < 6:
        time.sleep(rng.uniform(0.4, 1.2))
        up.clear()
        state["host"].proc.kill()
        state["host"].proc.wait()
        kills += 1
        start()
    for t in producers:
        t.join(120)
    assert not errors, errors
    got = {d: (v, note) for d, v, note in state["host"].sql("SELECT device, v, note FROM state")}
    assert kills >= 3
    assert got == model
    state["host"].sql("SELECT arrowport_stop()")
    state["host"].close()


def test_the_readmes_change_feed_example_runs(py_listening):
    import os
    import re
    h = py_listening
    readme = open(os.path.join(os.path.dirname(__file__), "..", "..", "README.md")).read()
    section = readme[readme.index("### Streams that merge on a key"):]
    setup = re.search(r"```sql\n(.*?)```", section, re.S).group(1)
    example = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    for statement in filter(str.strip, setup.split(";")):
        h.sql(statement)
    h.sql("INSERT INTO users VALUES (8, 'old', 'Lima')")
    exec(example.replace("127.0.0.1:8815", h.addr), {})
    assert h.sql("SELECT user_id, name, city FROM users ORDER BY 1") == [(8, "bob", "Rome")]


def test_a_store_made_before_keyed_streams_and_read_tokens_reads_and_gains_the_new_columns(tmp_path):
    """arrowport's own database from before `key`, `on_conflict` and `delete_column`: its mappings read with
    their defaults, and the next change adds the columns."""
    import duckdb as local
    import hosts
    db = str(tmp_path / "old.duckdb")
    own = local.connect(db + ".arrowport")
    own.sql("CREATE SCHEMA arrowport")
    own.sql("CREATE TABLE arrowport.streams (stream VARCHAR PRIMARY KEY, catalog VARCHAR, schema VARCHAR NOT NULL, "
            "\"table\" VARCHAR NOT NULL, create_table BOOLEAN NOT NULL, schema_policy VARCHAR NOT NULL, mode VARCHAR NOT NULL, "
            "created_at TIMESTAMPTZ NOT NULL DEFAULT now(), updated_at TIMESTAMPTZ NOT NULL DEFAULT now())")
    own.sql("INSERT INTO arrowport.streams (stream, schema, \"table\", create_table, schema_policy, mode) "
            "VALUES ('ev', 'main', 'ev', true, 'strict', 'append')")
    # Tokens from before read access: they write.
    own.sql("CREATE TABLE arrowport.tokens (name VARCHAR PRIMARY KEY, salt VARCHAR NOT NULL, hash VARCHAR NOT NULL, "
            "streams VARCHAR, created_at TIMESTAMPTZ NOT NULL, last_used_at TIMESTAMPTZ)")
    own.sql(f"INSERT INTO arrowport.tokens VALUES ('old', '{'00' * 16}', '{'00' * 32}', NULL, now(), NULL)")
    own.close()
    host = hosts.start("py20", db)
    try:
        host.sql(hosts.load_sql())
        assert host.sql("SELECT stream, key, on_conflict, delete_column FROM arrowport_streams()") == [("ev", [], "error", None)]
        assert host.sql("SELECT name, access FROM arrowport_tokens()") == [("old", "write")]
        host.sql("CALL arrowport_create_token('new', access := 'read')")
        assert host.sql("SELECT name, access FROM arrowport_tokens() ORDER BY name") == [("new", "read"), ("old", "write")]
        host.sql("CREATE TABLE ev (id BIGINT, v VARCHAR)")
        host.sql("CALL arrowport_alter_stream('ev', key := ['id'], on_conflict := 'ignore')")
        assert host.sql("SELECT stream, key, on_conflict FROM arrowport_streams()") == [("ev", ["id"], "ignore")]
    finally:
        host.close()
    host = hosts.start("py20", db)
    try:
        host.sql(hosts.load_sql())
        assert host.sql("SELECT stream, key, on_conflict FROM arrowport_streams()") == [("ev", ["id"], "ignore")]
    finally:
        host.close()


def test_the_json_endpoint_and_arrowport_send_merge_too_and_a_unique_constraint_serves(py_listening, tmp_path):
    import base64
    import hosts
    h = py_listening
    h.sql("CREATE TABLE users (user_id BIGINT UNIQUE, name VARCHAR)")
    h.sql("INSERT INTO users VALUES (1, 'ann'), (2, 'bob')")
    # A UNIQUE constraint is not a PRIMARY KEY: the mapping names the key.
    h.sql("CALL arrowport_create_stream('users', key := ['user_id'], on_conflict := 'update', delete_column := '_deleted')")
    t = users([1, 3], ["ANN", "cy"], [False, False])
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, t.schema) as w:
        w.write_table(t)
    payload = {"config": {"target_table": "users"}, "batch": {
        "arrow_schema": base64.b64encode(t.schema.serialize()).decode(), "data": base64.b64encode(sink.getvalue().to_pybytes()).decode()}}
    r = httpx.post(f"http://{h.addr}/stream/users", json=payload, timeout=60)
    assert r.status_code == 200, r.text
    assert h.sql("SELECT user_id, name FROM users ORDER BY 1") == [(1, "ANN"), (2, "bob"), (3, "cy")]
    # arrowport_send from another DuckDB: an update and a delete.
    sender = hosts.start("py20", str(tmp_path / "sender.duckdb"))
    try:
        sender.sql(hosts.load_sql())
        sender.sql("CREATE TABLE changes AS SELECT * FROM (VALUES (2::BIGINT, 'BOB', false), (3::BIGINT, NULL, true)) v(user_id, name, _deleted)")
        out = sender.sql(f"SELECT rows FROM arrowport_send('grpc://{h.addr}', 'users', query := 'FROM changes')")
        assert out == [(2,)]
    finally:
        sender.close()
    assert h.sql("SELECT user_id, name FROM users ORDER BY 1") == [(1, "ANN"), (2, "BOB")]
