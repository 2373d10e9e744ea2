"""Many hosts, one lake: streams whose target is a table of a DuckLake (catalog in PostgreSQL, data files in S3 as
moto serves it), each test in a world of its own (test/lake.py). Skipped, with the reason, only where the world
cannot be made (no PostgreSQL server package, no lake virtualenv)."""
import os
import random
import subprocess
import threading
import time

import httpx
import pyarrow as pa
import pyarrow.flight as fl
import pytest

import hosts
import lake
from clients import flight_put, ipc_bytes
from test_types import COLUMNS

ARROW = "application/vnd.apache.arrow.stream"
SECONDS = float(os.environ.get("LAKE_SECONDS", "30"))
# Types a DuckLake cannot hold: refused before anything is written, the column named.
LAKE_REFUSED = {"time64_ns": "TIME_NS", "fixed_list": "BIGINT[2]"}

pytestmark = pytest.mark.skipif(lake.why_missing() is not None, reason=str(lake.why_missing()))


@pytest.fixture
def world(tmp_path):
    w = lake.World(str(tmp_path))
    yield w
    w.close()


def post(addr, stream, table, key=None, client=None):
    headers = {"Content-Type": ARROW}
    if key:
        headers["Idempotency-Key"] = key
    return (client or httpx).post(f"http://{addr}/streams/{stream}", content=ipc_bytes(table), headers=headers, timeout=60)


def test_a_lake_stream_behaves_like_any_other(world, tmp_path):
    import adbc_driver_flightsql.dbapi as flightsql
    h = world.host(str(tmp_path / "h.duckdb"))
    addr = h.addr
    h.sql("FROM arrowport_create_stream('ev', target := 'lake.main.ev')")
    t = pa.table({"i": pa.array([1, 2, 3], pa.int64()), "s": pa.array(["a", None, "c"])})
    r = post(addr, "ev", t, key="k-rest")
    assert r.status_code == 200 and r.json()["table"] == "lake.main.ev", r.text
    again = post(addr, "ev", t, key="k-rest")
    assert again.json()["replayed"] is True
    assert flight_put(addr, "ev", t, key="k-flight")["rows"] == 3
    # Flight SQL ingest names the lake as the catalog.
    with flightsql.connect(f"grpc://{addr}") as conn, conn.cursor() as cur:
        assert cur.adbc_ingest("ev", t, mode="append", catalog_name="lake") == 3
    assert h.sql("SELECT count(*), sum(i), count(s) FROM lake.main.ev")[0] == (9, 18, 6)
    # The keys live in the lake, beside the rows they vouch for.
    assert h.sql("SELECT count(*) FROM lake.arrowport.requests")[0][0] == 2

    # replace: each request is the whole table.
    h.sql("FROM arrowport_create_stream('snap', target := 'lake.main.snap', mode := 'replace')")
    for n in (5, 2):
        assert post(addr, "snap", pa.table({"v": pa.array(range(n), pa.int32())})).status_code == 200
    assert h.sql("SELECT count(*) FROM lake.main.snap")[0][0] == 2

    # evolve: a new column is added to the lake table (ALTER), older rows read NULL.
    h.sql("FROM arrowport_create_stream('evo', target := 'lake.main.evo', schema_policy := 'evolve')")
    assert post(addr, "evo", pa.table({"a": pa.array([1], pa.int64())})).status_code == 200
    assert post(addr, "evo", pa.table({"a": pa.array([2], pa.int64()), "b": pa.array(["x"])})).status_code == 200
    assert h.sql("SELECT a, b FROM lake.main.evo ORDER BY a") == [(1, None), (2, "x")]
    # by_name: columns in another order land by name; strict refuses them.
    h.sql("FROM arrowport_create_stream('byname', target := 'lake.main.evo', schema_policy := 'by_name')")
    assert post(addr, "byname", pa.table({"b": pa.array(["y"]), "a": pa.array([3], pa.int64())})).status_code == 200
    assert h.sql("SELECT b FROM lake.main.evo WHERE a = 3") == [("y",)]
    h.sql("FROM arrowport_create_stream('strict', target := 'lake.main.evo')")
    r = post(addr, "strict", pa.table({"b": pa.array(["z"]), "a": pa.array([4], pa.int64())}))
    assert r.status_code == 409 and "does not fit table lake.main.evo" in r.json()["error"]["message"]

    # Every type of the fidelity list the lake can hold lands as it does in the host's own database.
    storable = {k: v for k, v in COLUMNS.items() if k not in LAKE_REFUSED}
    table = pa.table(storable)
    h.sql("FROM arrowport_create_stream('types_lake', target := 'lake.main.types')")
    assert post(addr, "types_lake", table).status_code == 200
    assert post(addr, "types_local", table).status_code == 200
    mismatches = []
    for c in storable:
        lake_rows = h.sql(f'SELECT typeof("{c}"), "{c}"::VARCHAR FROM lake.main.types')
        local_rows = h.sql(f'SELECT typeof("{c}"), "{c}"::VARCHAR FROM main.types_local')
        if lake_rows != local_rows:
            mismatches.append((c, lake_rows, local_rows))
    assert mismatches == []
    # The ones it cannot hold are refused up front, naming the column, and nothing is created.
    for c, sql_type in LAKE_REFUSED.items():
        h.sql(f"FROM arrowport_create_stream('bad_{c}', target := 'lake.main.bad_{c}')")
        r = post(addr, f"bad_{c}", pa.table({c: COLUMNS[c]}))
        assert r.status_code == 409, r.text
        assert f'cannot store column(s) "{c}" {sql_type}' in r.json()["error"]["message"], r.text
        assert h.sql(f"SELECT count(*) FROM duckdb_tables() WHERE database_name = 'lake' AND table_name = 'bad_{c}'")[0][0] == 0

    # A key past its window is free again: the expired row is replaced inside the new request's transaction.
    short = h.sql("FROM arrowport_listen('127.0.0.1:0', idempotency_window := 1)")[0][1]
    one = pa.table({"i": pa.array([7], pa.int64()), "s": pa.array(["w"])})
    assert "replayed" not in post(short, "ev", one, key="k-window").json()
    assert post(short, "ev", one, key="k-window").json()["replayed"] is True
    time.sleep(1.5)
    assert "replayed" not in post(short, "ev", one, key="k-window").json()
    assert h.sql("SELECT count(*) FROM lake.main.ev WHERE s = 'w'")[0][0] == 2
    assert h.sql("SELECT count(*) FROM lake.arrowport.requests WHERE key_sha256 = sha256('k-window')")[0][0] == 1
    h.sql("SELECT arrowport_stop()")
    h.close()


class Client(threading.Thread):
    """Sends 1,000-row requests tagged (client, sequence, row), each with its key, to the hosts in turn; retries a
    failed request with the same key on the next host until it is acknowledged."""

    def __init__(self, n, hosts_, protocol, stop_at):
        super().__init__()
        self.n, self.hosts, self.protocol, self.stop_at = n, hosts_, protocol, stop_at
        self.acked, self.retries, self.errors = [], 0, {}

    def run(self):
        http = httpx.Client(timeout=60)
        seq, turn = 0, self.n
        while time.time() < self.stop_at:
            rows = 1000
            t = pa.table({"c": pa.array([self.n] * rows, pa.int32()), "q": pa.array([seq] * rows, pa.int32()),
                          "r": pa.array(range(rows), pa.int32())})
            key = f"c{self.n}-{seq}"
            while True:
                h = self.hosts[turn % len(self.hosts)]
                turn += 1
                if h.dead:
                    continue
                try:
                    if self.protocol == "rest":
                        r = post(h.addr, "ev", t, key=key, client=http)
                        ok = r.status_code == 200
                        why = f"{r.status_code} {r.text[:120]}"
                    else:
                        flight_put(h.addr, "ev", t, key=key, timeout=60)
                        ok, why = True, ""
                except (httpx.HTTPError, pa.ArrowException, OSError) as e:
                    ok, why = False, type(e).__name__
                if ok:
                    self.acked.append((seq, rows))
                    break
                self.retries += 1
                self.errors[why] = self.errors.get(why, 0) + 1
                time.sleep(random.uniform(0.05, 0.3))
            seq += 1


def test_a_keyed_stream_merges_into_a_lake_table_as_plain_duckdb_would(world, tmp_path):
    """A DuckLake table has no constraints: the key is the mapping's. Random insert/update/delete requests from
    two hosts in turn, against the same rows applied one by one in plain DuckDB SQL (test_upserts)."""
    import random
    from test_upserts import apply_in_host, land_raw, request, rows_of, shaped_tables
    hs = [world.host(str(tmp_path / f"h{i}.duckdb")) for i in range(2)]
    value_columns = ["i32", "utf8", "f64", "ts_us_tz", "struct", "list", "uuid", "bool"]
    rng = random.Random("lake-upserts")
    columns, ddl = shaped_tables(hs[0], request("bigint", rng, 3, partial=False, value_columns=value_columns))
    hs[0].sql(f"CREATE TABLE reference ({ddl})")
    hs[0].sql(f"CREATE TABLE lake.main.users ({ddl})")
    for h in hs:
        h.sql("FROM arrowport_create_stream('users', target := 'lake.main.users', key := ['k'], on_conflict := 'update', "
              "delete_column := '_deleted', schema_policy := 'by_name')")
    for step in range(8):
        req = request("bigint", rng, rng.randrange(1, 25), partial=step % 3 == 2, value_columns=value_columns)
        addr = hs[step % 2].addr
        if step % 2:
            assert flight_put(addr, "users", req)["rows"] == req.num_rows
        else:
            r = post(addr, "users", req)
            assert r.status_code == 200, r.text
        land_raw(hs[0], step, req)
        apply_in_host(hs[0], "reference", step, req, ["k"], "update")
    want = rows_of(hs[0].sql, "reference", ["k"], columns)
    assert len(want) > 0
    for h in hs:
        assert rows_of(h.sql, "lake.main.users", ["k"], columns) == want
    # A NULL key is refused before the lake is touched.
    r = post(hs[0].addr, "users", pa.table({"k": pa.array([None], pa.int64())}))
    assert r.status_code == 400 and 'key column "k" is NULL' in r.json()["error"]["message"]
    for h in hs:
        h.sql("SELECT arrowport_stop()")
        h.close()


def test_a_followable_lake_stream_has_one_sequence_of_positions_across_hosts(world, tmp_path):
    """Two hosts commit into one followable DuckLake table at once: the positions are unique and without gaps
    across both (commits that race conflict on the positions row and are tried again), and a follower on one
    host receives what the other commits."""
    import json
    import pyarrow.flight as fl
    hs = [world.host(str(tmp_path / f"h{i}.duckdb")) for i in range(2)]
    for h in hs:
        h.sql("FROM arrowport_create_stream('ev', target := 'lake.main.ev', follow := true)")
    assert flight_put(hs[0].addr, "ev", pa.table({"id": pa.array([0], pa.int64())}))["rows"] == 1
    errors = []

    def produce(k):
        try:
            for j in range(15):
                t = pa.table({"id": pa.array(range(k * 1000 + j * 10, k * 1000 + j * 10 + 3), pa.int64())})
                assert flight_put(hs[k % 2].addr, "ev", t)["rows"] == 3
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=produce, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for h in hs:
        assert h.sql("SELECT count(*), count(DISTINCT arrowport_cursor), min(arrowport_cursor), max(arrowport_cursor) "
                     "FROM lake.main.ev") == [(181, 181, 1, 181)]
    client = fl.connect(f"grpc://{hs[1].addr}")
    reader = client.do_get(fl.Ticket(json.dumps({"follow": "ev", "after": 0})))
    seen = []
    while len(seen) < 181:
        seen.extend(reader.read_chunk().data.column("arrowport_cursor").to_pylist())
    assert seen == list(range(1, 182))
    assert flight_put(hs[0].addr, "ev", pa.table({"id": pa.array([9999], pa.int64())}))["rows"] == 1
    chunk = reader.read_chunk()
    assert chunk.data.column("id").to_pylist() == [9999] and chunk.app_metadata.to_pybytes() == b"182"
    client.close()
    for h in hs:
        h.sql("SELECT arrowport_stop()")
        h.close()


def test_three_hosts_land_exactly_once_while_one_is_killed(world, tmp_path):
    hs = [world.host(str(tmp_path / f"h{i}.duckdb")) for i in range(3)]
    for h in hs:
        h.dead = False
        h.sql("FROM arrowport_create_stream('ev', target := 'lake.main.ev')")
    stop_at = time.time() + SECONDS
    clients = [Client(i, hs, "rest" if i % 2 else "flight", stop_at) for i in range(6)]
    for c in clients:
        c.start()
    time.sleep(SECONDS / 3)
    hs[0].dead = True
    hs[0].proc.kill()
    hs[0].proc.wait()
    for c in clients:
        c.join(SECONDS + 120)
        assert not c.is_alive()
    acked = {(c.n, q): rows for c in clients for q, rows in c.acked}
    total = sum(acked.values())
    live = hs[1]
    rows, distinct = live.sql("SELECT count(*), count(DISTINCT (c, q, r)) FROM lake.main.ev")[0]
    per_request = dict(((c, q), n) for c, q, n in live.sql("SELECT c, q, count(*) FROM lake.main.ev GROUP BY c, q"))
    retries = sum(c.retries for c in clients)
    errors = {}
    for c in clients:
        for k, v in c.errors.items():
            errors[k] = errors.get(k, 0) + v
    print(f"lake: {len(acked)} requests acknowledged, {total} rows, {retries} retries ({errors}), "
          f"{rows} rows in the lake, {rows / SECONDS:.0f} rows/s")
    assert len(acked) > 50
    assert rows == distinct, "a row landed twice"
    assert per_request == acked, "the lake holds other requests than those acknowledged, or partial ones"
    assert rows == total
    for h in hs[1:]:
        h.sql("SELECT arrowport_stop()")
        h.close()


def test_a_lakes_keys_stay_in_its_catalog_until_maintenance_moves_them_to_a_file(world, tmp_path):
    # Without inlining at ATTACH, each commit's rows go to a Parquet file; the keys that vouch for them do not.
    h = world.host(str(tmp_path / "h.duckdb"), inline_rows=0)
    h.sql("FROM arrowport_create_stream('ev', target := 'lake.main.ev')")
    client = httpx.Client()
    one = pa.table({"i": pa.array(range(1000), pa.int64())})
    for k in ("k1", "k2", "k3"):
        r = post(h.addr, "ev", one, key=k, client=client)
        assert r.status_code == 200 and "replayed" not in r.json(), r.text
    assert len(world.s3.objects("data/main/ev/")) == 3
    assert world.s3.objects("data/arrowport/") == []
    assert h.sql("SELECT value, scope, scope_entry FROM lake.options() WHERE option_name = 'data_inlining_row_limit' "
                 "AND scope = 'TABLE'") == [("100000", "TABLE", "arrowport.requests")]
    assert post(h.addr, "ev", one, key="k2", client=client).json()["replayed"] is True
    # Maintenance flushes them into a file of the keys table; a retry is still found there.
    h.sql("FROM arrowport_maintain('lake', older_than := 0)")
    assert len(world.s3.objects("data/arrowport/")) == 1
    assert post(h.addr, "ev", one, key="k3", client=client).json()["replayed"] is True
    assert "replayed" not in post(h.addr, "ev", one, key="k4", client=client).json()
    assert h.sql("SELECT count(*) FROM lake.main.ev")[0][0] == 4000
    assert h.sql("SELECT count(*) FROM lake.arrowport.requests")[0][0] == 4
    h.sql("SELECT arrowport_stop()")
    h.close()

    # A setting of the operator's own for the keys table is left as it is.
    (tmp_path / "other").mkdir()
    other = lake.World(str(tmp_path / "other"))
    try:
        h = other.host(str(tmp_path / "o.duckdb"), inline_rows=0)
        h.sql("CREATE SCHEMA lake.arrowport")
        h.sql("CREATE TABLE lake.arrowport.requests (key_sha256 VARCHAR NOT NULL, stream VARCHAR NOT NULL, "
              "ack VARCHAR NOT NULL, committed_at TIMESTAMPTZ NOT NULL DEFAULT now())")
        h.sql("CALL lake.set_option('data_inlining_row_limit', 0, schema => 'arrowport', table_name => 'requests')")
        h.sql("FROM arrowport_create_stream('ev', target := 'lake.main.ev')")
        assert post(h.addr, "ev", one, key="k1").status_code == 200
        assert len(other.s3.objects("data/arrowport/")) == 1
        assert post(h.addr, "ev", one, key="k1").json()["replayed"] is True
        h.sql("SELECT arrowport_stop()")
        h.close()
    finally:
        other.close()


def test_a_lake_table_changed_between_grouped_commits_is_seen_by_the_next(world, tmp_path):
    h = world.host(str(tmp_path / "h.duckdb"), options=", group_window := 0.3")
    h.sql("FROM arrowport_create_stream('ev', target := 'lake.main.ev')")

    def burst(first):
        """Four requests at once (one group commit, as the window makes them), rows first..first+3."""
        codes = [None] * 4

        def send(i):
            r = post(h.addr, "ev", pa.table({"i": pa.array([first + i], pa.int64())}))
            codes[i] = (r.status_code, r.text)

        threads = [threading.Thread(target=send, args=(i,)) for i in range(4)]
        [t.start() for t in threads]
        [t.join() for t in threads]
        return codes

    snapshots = h.sql("SELECT count(*) FROM lake.snapshots()")[0][0]
    assert [c for c, _ in burst(0)] == [200] * 4
    assert h.sql("SELECT count(*) FROM lake.snapshots()")[0][0] - snapshots <= 2  # grouped
    assert [c for c, _ in burst(10)] == [200] * 4
    assert h.sql("SELECT list(i ORDER BY i) FROM lake.main.ev")[0][0] == [0, 1, 2, 3, 10, 11, 12, 13]
    # Dropped elsewhere: the next group does not find it; its requests, one by one, make it again.
    h.sql("DROP TABLE lake.main.ev")
    assert [c for c, _ in burst(20)] == [200] * 4
    assert h.sql("SELECT list(i ORDER BY i) FROM lake.main.ev")[0][0] == [20, 21, 22, 23]
    # A column added elsewhere: the next group sees it, and this strict stream's requests no longer fit.
    h.sql("ALTER TABLE lake.main.ev ADD COLUMN extra VARCHAR")
    codes = burst(30)
    assert [c for c, _ in codes] == [409] * 4, codes
    assert all("does not fit table lake.main.ev" in text for _, text in codes), codes
    assert h.sql("SELECT count(*) FROM lake.main.ev")[0][0] == 4
    h.sql("SELECT arrowport_stop()")
    h.close()


def test_a_lake_commit_that_loses_the_race_waits_commit_retry_wait_then_lands_once(world, tmp_path):
    """`commit_retry_wait`: DuckLake's pause before it sends a commit that lost the race for the lake's next
    snapshot again, on arrowport's own connections. The catalog refuses the next lake commit once, as PostgreSQL
    refuses the loser of a race (a trigger on DuckLake's snapshot table raising the same unique violation): with
    `commit_retry_wait := 3` the request is acknowledged after DuckLake's pause (0.5-1x the setting, so at least
    1.5 s; DuckLake's own pause would be at most 0.1 s), its rows landed once, two attempts made."""
    psql = [os.path.join(lake.PG_BIN, "psql"), "-h", "127.0.0.1", "-p", str(world.pg.port), "-U", "postgres", "-d", "lake",
            "-v", "ON_ERROR_STOP=1", "-c"]
    h = world.host(str(tmp_path / "h.duckdb"), options=", commit_retry_wait := 3")
    h.sql("FROM arrowport_create_stream('ev', target := 'lake.main.ev')")
    # The table and the keys table made first: the request below makes one lake commit.
    assert post(h.addr, "ev", pa.table({"i": pa.array([0], pa.int64())}), key="k-first").status_code == 200
    world.pg.run(*psql, """
        CREATE SEQUENCE attempts;
        CREATE FUNCTION lose_once() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF nextval('attempts') = 1 THEN
                RAISE unique_violation USING MESSAGE = 'duplicate key value violates unique constraint "ducklake_snapshot_pkey"';
            END IF;
            RETURN NEW;
        END $$;
        CREATE TRIGGER lose_once BEFORE INSERT ON public.ducklake_snapshot FOR EACH ROW EXECUTE FUNCTION lose_once();""")
    started = time.monotonic()
    r = post(h.addr, "ev", pa.table({"i": pa.array([1, 2], pa.int64())}), key="k-race")
    waited = time.monotonic() - started
    assert r.status_code == 200 and r.json()["rows"] == 2, r.text
    assert waited >= 1.5, f"acknowledged after {waited:.2f} s: DuckLake did not pause commit_retry_wait"
    attempts = subprocess.run(world.pg.as_user + psql[:-1] + ["-At", "-c", "SELECT last_value FROM attempts"],
                              capture_output=True, text=True, check=True).stdout
    assert attempts.split() == ["2"], attempts
    assert h.sql("SELECT list(i ORDER BY i) FROM lake.main.ev")[0][0] == [0, 1, 2]
    assert post(h.addr, "ev", pa.table({"i": pa.array([1, 2], pa.int64())}), key="k-race").json()["replayed"] is True
    h.sql("SELECT arrowport_stop()")
    h.close()


def test_maintenance_merges_small_files_now_and_on_a_timer(world, tmp_path):
    import adbc_driver_flightsql.dbapi as flightsql
    h = world.host(str(tmp_path / "h.duckdb"), listen=False)
    addr = h.sql("FROM arrowport_listen('127.0.0.1:0', sql := 'read_write')")[0][1]
    h.sql("FROM arrowport_create_stream('ev', target := 'lake.main.ev')")
    client = httpx.Client()

    def land(n, start):
        for i in range(start, start + n):
            # 1,000 rows: over DuckLake's inlining limit, so each commit writes a Parquet file.
            assert post(addr, "ev", pa.table({"i": pa.array(range(i * 1000, (i + 1) * 1000), pa.int64())}), client=client).status_code == 200

    land(12, 0)
    before = len(world.s3.objects("data/main/ev/"))
    assert before >= 12
    steps = h.sql("FROM arrowport_maintain('lake', older_than := 0)")
    assert [s[0] for s in steps] == ["ducklake_flush_inlined_data", "ducklake_merge_adjacent_files",
                                     "ducklake_expire_snapshots", "ducklake_cleanup_old_files"]
    after = len(world.s3.objects("data/main/ev/"))
    print(f"lake files: {before} before maintenance, {after} after")
    assert after <= 2
    assert h.sql("SELECT count(*), count(DISTINCT i) FROM lake.main.ev")[0] == (12000, 12000)

    # On a timer: files written after it was set are merged without another call.
    h.sql("FROM arrowport_maintain('lake', every := 1, older_than := 0)")
    land(6, 100)
    assert len(world.s3.objects("data/main/ev/")) >= 6
    deadline = time.time() + 30
    while time.time() < deadline and len(world.s3.objects("data/main/ev/")) > 2:
        time.sleep(0.5)
    assert len(world.s3.objects("data/main/ev/")) <= 2
    assert h.sql("SELECT count(*) FROM lake.main.ev")[0][0] == 18000

    # Not reachable over the network, however it is spelled.
    with flightsql.connect(f"grpc://{addr}") as conn:
        for sql in ["FROM arrowport_maintain('lake')", "FROM query('FROM arrowport' || '_maintain(''lake'')')"]:
            with conn.cursor() as cur, pytest.raises(Exception) as e:
                cur.execute(sql)
                cur.fetchall()
            assert "arrowport_maintain cannot be" in str(e.value), str(e.value)
    with pytest.raises(hosts.HostError) as e:
        h.sql("FROM arrowport_maintain('nowhere')")
    assert "not an attached DuckLake catalog" in str(e.value)
    h.sql("SELECT arrowport_stop()")
    h.close()
