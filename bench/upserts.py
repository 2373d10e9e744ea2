"""`make bench` (upserts): streams that merge on a key, against the same MERGE in-process.

Cases, each on a fresh file database whose `users` table (id BIGINT PRIMARY KEY) already holds EXISTING rows, so
the key lookups are real:
- one 1M-row upsert request (half new keys, half updates) over Flight into a stream with on_conflict 'update',
  against in-process Python duckdb running `MERGE INTO users USING <registered arrow table> ...` (the same rows);
- 1,000-row upsert requests (half new keys, half updates) from 8 concurrent Flight clients: requests/min, p50/p99.
Each large case runs three times (the median reported). Every run checks the table's final row count.
BENCH_QUICK=1: 1M rows already present and 200 small requests.
"""
import os
import platform
import statistics
import sys
import tempfile
import threading
import time

import duckdb
import pyarrow as pa
import pyarrow.flight as fl

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "test"))
import hosts  # noqa: E402
import report  # noqa: E402
from clients import flight_put  # noqa: E402

QUICK = os.environ.get("BENCH_QUICK") == "1"
EXISTING = 1_000_000 if QUICK else 10_000_000
REQUEST = 1_000_000
REPEAT = 1 if QUICK else 3
SMALL_REQUESTS = 200 if QUICK else 1000
CREATE = "CREATE TABLE users (id BIGINT PRIMARY KEY, name VARCHAR, score DOUBLE, seen TIMESTAMP)"
FILL = f"INSERT INTO users SELECT range, 'user ' || range, range / 7, TIMESTAMP '2026-01-01' + to_seconds(range) FROM range({EXISTING})"
MERGE = ("MERGE INTO users USING src ON users.id = src.id WHEN MATCHED THEN UPDATE SET name = src.name, score = src.score, "
         "seen = src.seen WHEN NOT MATCHED THEN INSERT (id, name, score, seen) VALUES (src.id, src.name, src.score, src.seen)")


def request(n, start):
    """n rows: the first half updates existing keys from `start`, the second half new keys past EXISTING."""
    half = n // 2
    ids = list(range(start, start + half)) + list(range(EXISTING + start, EXISTING + start + n - half))
    return pa.table({
        "id": pa.array(ids, pa.int64()),
        "name": pa.array([f"new {i}" for i in ids]),
        "score": pa.array([i * 0.5 for i in ids], pa.float64()),
        "seen": pa.array([1_800_000_000_000_000 + i for i in ids], pa.timestamp("us")),
    })


def baseline(table):
    with tempfile.TemporaryDirectory() as d:
        con = duckdb.connect(os.path.join(d, "base.duckdb"))
        con.execute(CREATE)
        con.execute(FILL)
        con.execute("CHECKPOINT")
        con.register("src", table)
        start = time.perf_counter()
        con.execute(MERGE)
        seconds = time.perf_counter() - start
        landed = con.execute("SELECT count(*) FROM users").fetchall()[0][0]
        con.close()
    return {"seconds": seconds, "landed": landed}


class Host:
    def __init__(self, directory):
        self.host = hosts.start("py20", os.path.join(directory, "port.duckdb"))
        self.host.sql(hosts.load_sql())
        self.addr = self.host.sql("SELECT arrowport_listen('127.0.0.1:0')")[0][0]
        self.host.sql(CREATE)
        self.host.sql(FILL)
        self.host.sql("CHECKPOINT")
        self.host.sql("CALL arrowport_create_stream('users', on_conflict := 'update')")

    def count(self):
        return self.host.sql("SELECT count(*) FROM users")[0][0]

    def close(self):
        self.host.sql("SELECT arrowport_stop()")
        self.host.close()


def large(table):
    with tempfile.TemporaryDirectory() as d:
        host = Host(d)
        c = fl.connect(f"grpc://{host.addr}")
        start = time.perf_counter()
        ack = flight_put(host.addr, "users", table, client=c)
        seconds = time.perf_counter() - start
        c.close()
        assert ack["rows"] == table.num_rows, ack
        landed = host.count()
        host.close()
    return {"seconds": seconds, "landed": landed}


def median(runs):
    runs = sorted(runs, key=lambda r: r["seconds"])
    chosen = dict(runs[len(runs) // 2])
    chosen["runs_seconds"] = [r["seconds"] for r in runs]
    return chosen


def small(clients):
    with tempfile.TemporaryDirectory() as d:
        host = Host(d)
        per_client = SMALL_REQUESTS // clients
        latencies, lock = [], threading.Lock()

        def worker(w):
            c = fl.connect(f"grpc://{host.addr}")
            mine = []
            for i in range(per_client):
                t = request(1000, (w * per_client + i) * 500)
                t0 = time.perf_counter()
                flight_put(host.addr, "users", t, client=c)
                mine.append(time.perf_counter() - t0)
            c.close()
            with lock:
                latencies.extend(mine)

        seconds = report.run_threads([threading.Thread(target=worker, args=(w,)) for w in range(clients)])
        landed = host.count()
        host.close()
    sent = per_client * clients
    q = statistics.quantiles(latencies, n=100)
    return {"case": f"1,000-row upserts, flight x{clients}", "requests": sent, "seconds": seconds,
            "requests_per_min": sent / seconds * 60, "p50_ms": q[49] * 1000, "p99_ms": q[98] * 1000,
            "landed": landed, "expected": EXISTING + sent * 500}


def main():
    print(f"upserts bench on {platform.node()} ({os.cpu_count()} cores), DuckDB {duckdb.__version__}, "
          f"{EXISTING:,} rows present, quick={QUICK}", flush=True)
    table = request(REQUEST, 0)
    expected = EXISTING + REQUEST // 2
    base = median([baseline(table) for _ in range(REPEAT)])
    ours = median([large(table) for _ in range(REPEAT)])
    results = [
        {"case": "1M-row MERGE in-process", "rows": REQUEST, **base, "expected": expected},
        {"case": "1M-row upsert request, flight", "rows": REQUEST, **ours, "expected": expected,
         "vs_in_process": base["seconds"] / ours["seconds"]},
    ]
    print(f"  in-process MERGE {base['seconds']:.3f}s; arrowport {ours['seconds']:.3f}s "
          f"({results[1]['vs_in_process']:.2f}x of in-process)", flush=True)
    for clients in (1, 8):
        row = small(clients)
        results.append(row)
        print(f"  {row['case']}: {row['requests_per_min']:,.0f} requests/min, p50 {row['p50_ms']:.1f} ms, "
              f"p99 {row['p99_ms']:.1f} ms", flush=True)
    bad = [f"{r['case']}: {r['landed']} rows, expected {r['expected']}" for r in results if r["landed"] != r["expected"]]
    when = report.stamp()
    report.finish({"when": when, "host": platform.node(), "cores": os.cpu_count(), "duckdb": duckdb.__version__,
                   "quick": QUICK, "existing_rows": EXISTING, "results": results},
                  f"{when}-upserts" + ("-quick" if QUICK else ""), bad)


if __name__ == "__main__":
    main()
