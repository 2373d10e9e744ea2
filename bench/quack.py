"""`make bench` (Quack): DuckDB's own client-server protocol beside arrowport, in the same run, on the same data and
machine, with DuckDB 1.5.5 on every side (the release whose Quack, httpfs and ADBC-driver wheels are on PyPI; a
faster Quack is said to come with DuckDB 2.0, not published as a wheel).

Cases (medians of REPEATS runs for the bulk cases; every case checks the rows that landed):
- bulk: ROWS_SMALL and ROWS_BIG rows of an events table (BIGINT, DOUBLE, VARCHAR) pushed from a Python client:
  Quack through ATTACH + INSERT and through its ADBC driver's ingest; arrowport through Flight DoPut, REST and ADBC
  Flight SQL ingest; and the in-process INSERT of the same Arrow table as the baseline. For arrowport and the
  baseline also the CPU time the database's process spent (from /proc; the client's is not counted), so the cost
  per row can be compared where wall-clock ratios mix the client's CPU with the host's on two shared cores;
- DuckDB to DuckDB: ROWS_BIG rows of a local table, `INSERT INTO remote.events SELECT * FROM src` over Quack against
  `arrowport_send` (Flight) from a DuckDB with arrowport loaded;
- small requests: 1,000-row requests from 1 and 8 clients for SMALL_SECONDS (Quack: ADBC ingest; arrowport: Flight
  DoPut): requests/min, p50/p99;
- reading: ROWS_BIG rows read back with SELECT * (Quack: ADBC and ATTACH; arrowport: ADBC Flight SQL), against
  the in-process `SELECT *` to Arrow.
BENCH_QUICK=1: 1M / 2M rows, one run each, 5 s of small requests. Writes bench/results/<timestamp>-quack.json.
"""
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time

import httpx
import pyarrow as pa
import pyarrow.flight as fl

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "test"))
import hosts  # noqa: E402
import lake  # noqa: E402
import report  # noqa: E402
import cpugroup  # noqa: E402
from clients import flight_put, ipc_bytes  # noqa: E402

QUICK = os.environ.get("BENCH_QUICK") == "1"
ROWS_SMALL = 1_000_000
ROWS_BIG = 2_000_000 if QUICK else 10_000_000
REPEATS = 1 if QUICK else 3
SMALL_SECONDS = 5 if QUICK else 10
PEER = os.path.join(ROOT, "bench", "quack_peer.py")
# Rows per Arrow batch on every side (DuckDB's row group; a table read from Parquet comes in batches like these).
# One batch of millions of rows would be one task for DuckDB's scan: a single thread inserts it while the
# statement's other thread waits, in-process as in a host.
BATCH_ROWS = 122_880


def events(n):
    """The events table in batches of BATCH_ROWS rows, as quack_peer.py builds it for Quack and the baseline."""
    t = pa.table({"id": pa.array(range(n), pa.int64()), "v": pa.array([0.5] * n, pa.float64()),
                  "s": pa.array([f"s{i % 1000}" for i in range(n)])})
    return pa.Table.from_batches(t.to_batches(max_chunksize=BATCH_ROWS))


def peer(*args):
    out = subprocess.run([lake.PYTHON, PEER, *map(str, args)], capture_output=True, text=True, timeout=1800)
    if out.returncode != 0:
        raise RuntimeError(f"quack_peer {args}: {out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


class Quack:
    """A Quack server (DuckDB 1.5.5) on a fresh file database."""

    def __init__(self, directory):
        import socket
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.proc = subprocess.Popen([lake.PYTHON, PEER, "serve", os.path.join(directory, "quack.duckdb"), str(self.port)],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert self.proc.stdout.readline().strip() == "serving", self.proc.stderr.read()

    def rows(self):
        return peer("count", self.port)["rows"]

    def close(self):
        self.proc.kill()
        self.proc.wait()


class Arrowport:
    """An arrowport host (DuckDB 1.5.5) on a fresh file database, listening with read-only SQL."""

    def __init__(self, directory, name="arrowport"):
        self.host = hosts.PythonHost("lake", os.path.join(directory, f"{name}.duckdb"))
        self.host.sql(hosts.load_sql())
        self.host.sql("CREATE TABLE events (id BIGINT, v DOUBLE, s VARCHAR)")
        self.addr = self.host.sql("SELECT address FROM arrowport_listen('127.0.0.1:0', sql := 'read_only')")[0][0]

    def rows(self):
        return self.host.sql("SELECT count(*) FROM events")[0][0]

    def close(self):
        self.host.sql("SELECT arrowport_stop()")
        self.host.close()


def adbc_flightsql(addr):
    import adbc_driver_flightsql.dbapi as flight_sql
    return flight_sql.connect(f"grpc://{addr}")


def arrowport_push(addr, table, how):
    """Seconds to push the table one way."""
    started = time.perf_counter()
    if how == "flight":
        flight_put(addr, "events", table)
    elif how == "rest":
        r = httpx.post(f"http://{addr}/streams/events", content=ipc_bytes(table),
                       headers={"Content-Type": "application/vnd.apache.arrow.stream"}, timeout=600)
        assert r.status_code == 200, r.text
    else:
        conn = adbc_flightsql(addr)
        with conn.cursor() as cur:
            # The driver sends a batch as one gRPC message of at most 16 MiB (a batch here is about 3 MB).
            cur.adbc_ingest("events", table, mode="append")
        conn.commit()
        conn.close()
    return time.perf_counter() - started


def bulk(rows, bad):
    """Seconds (median) per way of pushing `rows` rows, each into a fresh server."""
    table = events(rows)
    ways = {"in-process": [], "quack attach": [], "quack adbc": [], "arrowport flight": [], "arrowport rest": [],
            "arrowport adbc": []}
    cpu = {"in-process": [], "arrowport flight": [], "arrowport rest": [], "arrowport adbc": []}
    for _ in range(REPEATS):
        with tempfile.TemporaryDirectory() as d:
            base = peer("inprocess", os.path.join(d, "local.duckdb"), rows)
            ways["in-process"].append(base["seconds"])
            cpu["in-process"].append(base["cpu_seconds"])
        for mode in ("attach", "adbc"):
            with tempfile.TemporaryDirectory() as d:
                q = Quack(d)
                try:
                    ways[f"quack {mode}"].append(peer("push", q.port, rows, mode)["seconds"])
                    if q.rows() != rows:
                        bad.append(f"quack {mode} {rows}: {q.rows()} rows")
                finally:
                    q.close()
        for how in ("flight", "rest", "adbc"):
            with tempfile.TemporaryDirectory() as d:
                a = Arrowport(d)
                try:
                    host_cpu = cpugroup.cpu_seconds(a.host.proc.pid)
                    ways[f"arrowport {how}"].append(arrowport_push(a.addr, table, how))
                    cpu[f"arrowport {how}"].append(cpugroup.cpu_seconds(a.host.proc.pid) - host_cpu)
                    if a.rows() != rows:
                        bad.append(f"arrowport {how} {rows}: {a.rows()} rows")
                finally:
                    a.close()
    return {k: statistics.median(v) for k, v in ways.items()}, {k: statistics.median(v) for k, v in cpu.items()}


def duckdb_to_duckdb(rows, bad):
    with tempfile.TemporaryDirectory() as d:
        q = Quack(d)
        try:
            quack = peer("send", q.port, rows)["seconds"]
            if q.rows() != rows:
                bad.append(f"quack send: {q.rows()} rows")
        finally:
            q.close()
        a = Arrowport(d)
        sender = hosts.PythonHost("lake", os.path.join(d, "sender.duckdb"))
        try:
            sender.sql(hosts.load_sql())
            sender.sql(f"CREATE TABLE src AS SELECT range AS id, 0.5::DOUBLE AS v, 's' || (range % 1000) AS s FROM range({rows})")
            started = time.perf_counter()
            sender.sql(f"FROM arrowport_send('grpc://{a.addr}', 'events', query := 'SELECT * FROM src')")
            ours = time.perf_counter() - started
            if a.rows() != rows:
                bad.append(f"arrowport_send: {a.rows()} rows")
        finally:
            sender.close()
            a.close()
    return {"quack insert into remote": quack, "arrowport_send": ours}


def small(clients, bad):
    with tempfile.TemporaryDirectory() as d:
        q = Quack(d)
        try:
            out = peer("small", q.port, clients, SMALL_SECONDS)
            quack_lat = out["latencies"]
            quack = {"requests_per_min": len(quack_lat) / out["seconds"] * 60,
                     "p50_ms": statistics.median(quack_lat) * 1000, "p99_ms": quantile(quack_lat, 0.99) * 1000}
            if q.rows() != 1000 * len(quack_lat):
                bad.append(f"quack small: {q.rows()} rows for {len(quack_lat)} requests")
        finally:
            q.close()
        a = Arrowport(d)
        try:
            latencies, stop = [], time.time() + SMALL_SECONDS
            body = events(1000)

            def client():
                c = fl.connect(f"grpc://{a.addr}")
                while time.time() < stop:
                    sent = time.perf_counter()
                    flight_put(a.addr, "events", body, client=c)
                    latencies.append(time.perf_counter() - sent)
                c.close()

            seconds = report.run_threads([threading.Thread(target=client) for _ in range(clients)])
            ours = {"requests_per_min": len(latencies) / seconds * 60, "p50_ms": statistics.median(latencies) * 1000,
                    "p99_ms": quantile(latencies, 0.99) * 1000}
            if a.rows() != 1000 * len(latencies):
                bad.append(f"arrowport small: {a.rows()} rows for {len(latencies)} requests")
        finally:
            a.close()
    return {"quack adbc": quack, "arrowport flight": ours}


def quantile(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def reading(rows, bad):
    table = events(rows)
    out = {}
    with tempfile.TemporaryDirectory() as d:
        out["in-process"] = peer("inprocess", os.path.join(d, "local.duckdb"), rows)["read_seconds"]
        q = Quack(d)
        try:
            peer("push", q.port, rows, "adbc")
            for mode in ("adbc", "attach"):
                got = peer("read", q.port, mode)
                out[f"quack {mode}"] = got["seconds"]
                if got["rows"] != rows:
                    bad.append(f"quack read {mode}: {got['rows']} rows")
        finally:
            q.close()
        a = Arrowport(d)
        try:
            flight_put(a.addr, "events", table)
            a.host.sql("CHECKPOINT")
            conn = adbc_flightsql(a.addr)
            with conn.cursor() as cur:
                started = time.perf_counter()
                cur.execute("SELECT * FROM events")
                got = cur.fetch_arrow_table().num_rows
                out["arrowport adbc"] = time.perf_counter() - started
            conn.close()
            if got != rows:
                bad.append(f"arrowport read: {got} rows")
        finally:
            a.close()
    return out


def main():
    why = lake.why_missing()
    if why:
        print(f"quack bench skipped: {why}")
        return
    print(f"quack bench on {platform.node()} ({os.cpu_count()} cores), quick={QUICK}, DuckDB 1.5.5 everywhere", flush=True)
    bad = []
    results = {"when": report.stamp(), "quick": QUICK, "duckdb": "1.5.5", "bulk": {}, "small": {}}
    results["cpu"] = {}
    for rows in (ROWS_SMALL, ROWS_BIG):
        r, cpu = bulk(rows, bad)
        results["bulk"][rows], results["cpu"][rows] = r, cpu
        print(f"  push {rows:,} rows (s): " + ", ".join(f"{k} {v:.2f}" for k, v in r.items()), flush=True)
        print(f"  database process CPU for {rows:,} rows (s): " + ", ".join(
            f"{k} {v:.2f} ({v / cpu['in-process']:.2f}x)" for k, v in cpu.items()), flush=True)
    r = duckdb_to_duckdb(ROWS_BIG, bad)
    results["duckdb_to_duckdb"] = r
    print(f"  DuckDB to DuckDB {ROWS_BIG:,} rows (s): " + ", ".join(f"{k} {v:.2f}" for k, v in r.items()), flush=True)
    for clients in (1, 8):
        r = small(clients, bad)
        results["small"][clients] = r
        print(f"  1,000-row requests, {clients} client(s): " + ", ".join(
            f"{k} {v['requests_per_min']:,.0f}/min p50 {v['p50_ms']:.1f} ms p99 {v['p99_ms']:.1f} ms" for k, v in r.items()),
            flush=True)
    r = reading(ROWS_BIG, bad)
    results["reading"] = r
    print(f"  read {ROWS_BIG:,} rows back (s): " + ", ".join(f"{k} {v:.2f}" for k, v in r.items()), flush=True)
    lines = ["| case | in-process | Quack | arrowport | arrowport vs Quack |", "|---|---:|---:|---:|---:|"]
    for rows, r in results["bulk"].items():
        quack = min(r["quack attach"], r["quack adbc"])
        ours = min(r["arrowport flight"], r["arrowport rest"], r["arrowport adbc"])
        lines.append(f"| {rows:,} rows pushed from Python | {r['in-process']:.2f} s | {r['quack attach']:.2f} s (ATTACH), "
                     f"{r['quack adbc']:.2f} s (ADBC) | {r['arrowport flight']:.2f} s Flight, {r['arrowport rest']:.2f} s REST, "
                     f"{r['arrowport adbc']:.2f} s ADBC | {quack / ours:.1f}x faster |")
    r = results["duckdb_to_duckdb"]
    lines.append(f"| {ROWS_BIG:,} rows DuckDB to DuckDB | | {r['quack insert into remote']:.2f} s | {r['arrowport_send']:.2f} s "
                 f"(arrowport_send) | {r['quack insert into remote'] / r['arrowport_send']:.1f}x faster |")
    for clients, r in results["small"].items():
        q, a = r["quack adbc"], r["arrowport flight"]
        lines.append(f"| 1,000-row requests, {clients} client(s) | | {q['requests_per_min']:,.0f}/min, p99 {q['p99_ms']:.0f} ms | "
                     f"{a['requests_per_min']:,.0f}/min, p99 {a['p99_ms']:.0f} ms | {a['requests_per_min'] / q['requests_per_min']:.1f}x |")
    r = results["reading"]
    lines.append(f"| {ROWS_BIG:,} rows read back | {r['in-process']:.2f} s | {r['quack adbc']:.2f} s (ADBC), {r['quack attach']:.2f} s "
                 f"(ATTACH) | {r['arrowport adbc']:.2f} s (ADBC Flight SQL; {r['in-process'] / r['arrowport adbc']:.2f}x of in-process) | "
                 f"{min(r['quack adbc'], r['quack attach']) / r['arrowport adbc']:.1f}x faster |")
    print()
    print("\n".join(lines))
    results["table"] = lines
    report.finish(results, f"{results['when']}-quack" + ("-quick" if QUICK else ""), bad)


if __name__ == "__main__":
    main()
