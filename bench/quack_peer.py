"""DuckDB's Quack, for bench/quack.py: run with the lake virtualenv's Python (DuckDB 1.5.5 and the Quack, httpfs
wheels for it).

    quack_peer.py serve <db> <port>                 a Quack server on a file database (events table), until killed
    quack_peer.py push <port> <rows> attach|adbc     rows pushed from a client; prints {"seconds": ...}
    quack_peer.py send <port> <rows>                DuckDB to DuckDB: INSERT INTO remote.t SELECT * FROM a local table
    quack_peer.py small <port> <clients> <seconds>  1,000-row ADBC ingests from `clients` threads: requests, latencies
    quack_peer.py read <port> attach|adbc           SELECT * of the table back as Arrow
    quack_peer.py count <port>                       rows in the served table
    quack_peer.py inprocess <db> <rows>             the in-process baseline: INSERT of an Arrow table, then SELECT * back
"""
import glob
import json
import os
import sys
import threading
import time

import duckdb
import pyarrow as pa

SITE = glob.glob(os.path.join(os.path.dirname(os.path.dirname(sys.executable)), "lib", "python3*", "site-packages"))[0]
QUACK = glob.glob(os.path.join(SITE, "duckdb_extension_quack", "extensions", "v1.5.5", "quack.duckdb_extension"))[0]
HTTPFS = glob.glob(os.path.join(SITE, "duckdb_extension_httpfs", "extensions", "v1.5.5", "httpfs.duckdb_extension"))[0]
TOKEN = "bench-secret"


def events(n, start=0):
    """The events table in batches of 122,880 rows, as bench/quack.py builds it."""
    t = pa.table({"id": pa.array(range(start, start + n), pa.int64()), "v": pa.array([0.5] * n, pa.float64()),
                  "s": pa.array([f"s{i % 1000}" for i in range(n)])})
    return pa.Table.from_batches(t.to_batches(max_chunksize=122_880))


def duck(path=":memory:"):
    c = duckdb.connect(path, config={"allow_unsigned_extensions": "true"})
    c.sql(f"LOAD '{HTTPFS}'")
    c.sql(f"LOAD '{QUACK}'")
    return c


def attached(port):
    c = duck()
    c.sql(f"CREATE SECRET (TYPE quack, TOKEN '{TOKEN}')")
    c.sql(f"ATTACH 'quack:127.0.0.1:{port}' AS remote (DISABLE_SSL true)")
    return c


def adbc(port):
    import adbc_driver_quack.dbapi as quack
    return quack.connect(f"quack://127.0.0.1:{port}", db_kwargs={"adbc.quack.token": TOKEN})


def main():
    what, args = sys.argv[1], sys.argv[2:]
    out = {}
    if what == "serve":
        c = duck(args[0])
        c.sql("CREATE TABLE IF NOT EXISTS events (id BIGINT, v DOUBLE, s VARCHAR)")
        c.execute(f"FROM quack_serve('quack:127.0.0.1:{args[1]}', token := '{TOKEN}', disable_ssl := true)").fetchall()
        print("serving", flush=True)
        while True:
            time.sleep(3600)
    if what == "inprocess":
        c = duckdb.connect(args[0])
        c.sql("CREATE TABLE events (id BIGINT, v DOUBLE, s VARCHAR)")
        t = events(int(args[1]))
        started, cpu = time.perf_counter(), time.process_time()
        c.sql("INSERT INTO events SELECT * FROM t")
        write, write_cpu = time.perf_counter() - started, time.process_time() - cpu
        started = time.perf_counter()
        rows = c.execute("SELECT * FROM events").fetch_arrow_table().num_rows
        print(json.dumps({"seconds": write, "cpu_seconds": write_cpu, "read_seconds": time.perf_counter() - started,
                          "rows": rows}), flush=True)
        return
    port = int(args[0])
    if what == "count":
        conn = adbc(port)
        with conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM events")
            out = {"rows": cur.fetchall()[0][0]}
    elif what == "push":
        n, mode = int(args[1]), args[2]
        t = events(n)
        if mode == "attach":
            c = attached(port)
            started = time.perf_counter()
            c.sql("INSERT INTO remote.events SELECT * FROM t")
        else:
            conn = adbc(port)
            started = time.perf_counter()
            with conn.cursor() as cur:
                cur.adbc_ingest("events", t, mode="append")
            conn.commit()
        out = {"seconds": time.perf_counter() - started}
    elif what == "send":
        n = int(args[1])
        c = attached(port)
        c.sql(f"CREATE TABLE src AS SELECT range AS id, 0.5::DOUBLE AS v, 's' || (range % 1000) AS s FROM range({n})")
        started = time.perf_counter()
        c.sql("INSERT INTO remote.events SELECT * FROM src")
        out = {"seconds": time.perf_counter() - started}
    elif what == "small":
        clients, seconds = int(args[1]), float(args[2])
        latencies, stop = [], time.time() + seconds
        body = events(1000)

        def client():
            conn = adbc(port)
            with conn.cursor() as cur:
                while time.time() < stop:
                    sent = time.perf_counter()
                    cur.adbc_ingest("events", body, mode="append")
                    conn.commit()
                    latencies.append(time.perf_counter() - sent)

        threads = [threading.Thread(target=client) for _ in range(clients)]
        started = time.perf_counter()
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        out = {"seconds": time.perf_counter() - started, "latencies": latencies}
    elif what == "read":
        mode = args[1]
        if mode == "attach":
            c = attached(port)
            started = time.perf_counter()
            rows = c.execute("SELECT * FROM remote.events").fetch_arrow_table().num_rows
        else:
            conn = adbc(port)
            with conn.cursor() as cur:
                started = time.perf_counter()
                cur.execute("SELECT * FROM events")
                rows = cur.fetch_arrow_table().num_rows
        out = {"seconds": time.perf_counter() - started, "rows": rows}
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
