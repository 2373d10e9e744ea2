"""`make bench`: arrowport side by side with in-process DuckDB, on one machine, in one run.

Cases (each on a fresh file database; every run checks that the rows landed equal the rows sent):
- baseline: Python duckdb in-process, `INSERT INTO t SELECT * FROM <registered arrow table>`;
- arrowport in a separate DuckDB host process (Python duckdb 2.0 with the extension loaded):
  Flight DoPut (pyarrow.flight; its timing includes pyarrow's streaming IPC serialization), REST raw IPC stream
  (POST /streams/{name}, streamed body, from httpx and from curl; the IPC body is in the client's memory or in
  a file before the clock starts), the original's JSON endpoint (its timing includes the client's base64 and
  JSON encoding); IPC compression none / zstd / lz4 at 1M rows for each;
- small batches: 1,000 requests of 1,000 rows, 1 and 8 concurrent clients, Flight and REST;
- the host's RSS before, peak during, and after the 10M-row DoPut;
- send: `arrowport_send` from a second DuckDB host process (its table made from the same SQL off the clock) over
  Flight (send-grpc) and REST (send-http); its RSS columns are the sender's.

Both sides time the same thing: rows into an existing, empty table on a connection already open. The baseline
creates its table (`CREATE TABLE t AS SELECT * FROM src LIMIT 0`) before its clock; arrowport's host gets that
same CREATE TABLE, and its client connects and sends one empty request, before the clock (curl's process start
and connection stay on its clock).

Each large case, and the baseline, runs three times (each on a fresh database and host); the run with the
median time is reported, with all three times in the JSON. Prints a Markdown table and writes bench/results/<timestamp>.json. Exits non-zero when a row count is off.
Set BENCH_QUICK=1 for a short run (100k/1M rows, 200 small requests) while developing, and BENCH_ONLY=large or
BENCH_ONLY=small for one half.
"""
import base64
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time

import duckdb
import httpx
import pyarrow as pa
import pyarrow.flight as fl

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "test"))
import hosts  # noqa: E402
import report  # noqa: E402  (bench/, this script's own directory)
from clients import flight_put, ipc_bytes  # noqa: E402

QUICK = os.environ.get("BENCH_QUICK") == "1"
ONLY = os.environ.get("BENCH_ONLY", "")
REPEAT = 1 if QUICK else 3  # each large case (and the baseline) runs this often; the median run is reported
SIZES = [100_000, 1_000_000] if QUICK else [100_000, 1_000_000, 10_000_000]
SMALL_REQUESTS = 200 if QUICK else 1000
ARROW = "application/vnd.apache.arrow.stream"
BATCH_ROWS = 131_072


def rechunk(t):
    return pa.Table.from_batches(t.combine_chunks().to_batches(max_chunksize=BATCH_ROWS))


def events_sql(n):
    """The original service's benchmark table, deterministic."""
    return f"""SELECT range::BIGINT AS id, (1700000000000 + range)::BIGINT AS "timestamp", ((range % 1000) * 0.5)::DOUBLE AS value,
               ['cpu', 'mem', 'disk', 'net'][(range % 4) + 1] AS category, ((range * 7) % 100) / 3.0 AS metric
            FROM range({n})"""


def events(n):
    return rechunk(duckdb.sql(events_sql(n)).to_arrow_table())


def wide_sql(n):
    """20 columns, string-heavy, with timestamps, decimals and lists."""
    return f"""SELECT range::BIGINT AS id,
               'user_' || (range % 50000)::VARCHAR AS user_name,
               'https://example.com/' || md5(range::VARCHAR) AS url,
               md5((range * 3)::VARCHAR) AS session,
               ['GET', 'POST', 'PUT'][(range % 3) + 1] AS method,
               (range % 600)::INTEGER AS status,
               TIMESTAMP '2026-01-01' + to_microseconds(range * 1000) AS ts,
               TIMESTAMPTZ '2026-01-01 00:00:00+00' + to_microseconds(range * 7) AS ts_tz,
               (range % 100000)::DECIMAL(18, 3) / 7 AS amount,
               (range % 97)::DECIMAL(9, 2) AS tax,
               [range % 10, range % 7, range % 3] AS tags,
               ['a', 'b', (range % 9)::VARCHAR] AS labels,
               range % 2 = 0 AS flag,
               (range % 1000) / 3.0 AS score,
               (range % 255)::UTINYINT AS small,
               'country_' || (range % 200)::VARCHAR AS country,
               'agent/' || (range % 30)::VARCHAR || ' (' || md5((range % 77)::VARCHAR) || ')' AS user_agent,
               DATE '2020-01-01' + (range % 2000)::INTEGER AS day,
               (range * 13 % 1000003)::BIGINT AS counter,
               repeat('x', (range % 40)::INTEGER) AS padding
            FROM range({n})"""


def wide(n):
    return rechunk(duckdb.sql(wide_sql(n)).to_arrow_table())


DATA_SQL = {"events": events_sql, "wide": wide_sql}


def table_sql(table):
    """The CREATE TABLE that the baseline's `CREATE TABLE t AS SELECT * FROM src LIMIT 0` makes for this table, so
    arrowport's target starts out exactly like the baseline's: existing, empty, the same column types."""
    con = duckdb.connect()
    con.register("src", table)
    con.execute("CREATE TABLE t AS SELECT * FROM src LIMIT 0")
    sql = con.execute("SELECT sql FROM duckdb_tables() WHERE table_name = 't'").fetchone()[0]
    con.close()
    return sql


def baseline(table):
    """In-process INSERT; also DuckDB's own memory growth for it (this process's RSS around the INSERT), the
    share of a host's growth that any writer into DuckDB causes."""
    with tempfile.TemporaryDirectory() as d:
        con = duckdb.connect(os.path.join(d, "base.duckdb"))
        con.register("src", table)
        con.execute("CREATE TABLE t AS SELECT * FROM src LIMIT 0")
        with hosts.PeakRss() as rss:
            start = time.perf_counter()
            con.execute("INSERT INTO t SELECT * FROM src")
            elapsed = time.perf_counter() - start
        landed = con.execute("SELECT count(*) FROM t").fetchone()[0]
        con.close()
    return {"seconds": elapsed, "landed": landed, **rss.mib()}


class Host:
    """A separate DuckDB process (Python duckdb 2.0) with arrowport loaded and listening."""

    def __init__(self, directory):
        self.host = hosts.start("py20", os.path.join(directory, "port.duckdb"))
        self.host.sql(hosts.load_sql())
        self.addr = self.host.sql("SELECT arrowport_listen('127.0.0.1:0')")[0][0]

    def count(self, table):
        return self.host.sql(f'SELECT count(*) FROM "{table}"')[0][0]

    def close(self):
        self.host.sql("SELECT arrowport_stop()")
        self.host.close()


def rest_put(client, addr, name, body):
    """A streamed POST of an IPC body already in memory (1 MiB pieces, chunked; views, not copies, of the body)."""

    def pieces():
        view = memoryview(body)
        for i in range(0, len(body), 1 << 20):
            yield view[i:i + (1 << 20)]

    r = client.post(f"http://{addr}/streams/{name}", content=pieces(), headers={"Content-Type": ARROW})
    r.raise_for_status()
    return r.json()


def write_body(body, directory):
    path = os.path.join(directory, "body.arrows")
    with open(path, "wb") as f:
        f.write(body)
    return path


def curl_put(addr, name, path):
    """The same streamed POST with curl from a file (no Python in the client's path)."""
    out = subprocess.run(["curl", "-sS", "--fail-with-body", "-H", f"Content-Type: {ARROW}", "-H", "Transfer-Encoding: chunked",
                          "--data-binary", f"@{path}", f"http://{addr}/streams/{name}"], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def json_put(client, addr, name, table, compression=None):
    payload = {
        "config": {"target_table": name},
        "batch": {"arrow_schema": base64.b64encode(table.schema.serialize()).decode(),
                  "data": base64.b64encode(ipc_bytes(table, compression)).decode()},
    }
    r = client.post(f"http://{addr}/stream/{name}", json=payload)
    r.raise_for_status()
    return r.json()


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def median_run(runs):
    """The run with the median time; a row count that is off in any run is the one reported (and fails the bench)."""
    runs = sorted(runs, key=lambda r: r["seconds"])
    chosen = dict(runs[len(runs) // 2])
    off = [r["landed"] for r in runs if r["landed"] != chosen["landed"]]
    if off:
        chosen["landed"] = off[0]
    chosen["runs_seconds"] = [r["seconds"] for r in runs]
    return chosen


def one_large(table, protocol, compression, create, empty):
    """One request of the whole table into a fresh host: seconds, rows landed and the host's RSS around it."""
    with tempfile.TemporaryDirectory() as d:
        host = Host(d)
        # Set-up off the clock, as the baseline's is: the target table exists (empty) and the client's
        # connection is open, warmed by an empty request (which writes nothing). curl opens its own.
        host.host.sql(create)
        with hosts.PeakRss(host.host.proc.pid) as rss, httpx.Client(timeout=600) as client:
            if protocol in ("rest", "json"):
                client.post(f"http://{host.addr}/streams/t", content=empty, headers={"Content-Type": ARROW}).raise_for_status()
            if protocol == "flight":
                c = fl.connect(f"grpc://{host.addr}")
                flight_put(host.addr, "t", table.schema.empty_table(), client=c)
                seconds, _ = timed(lambda: flight_put(host.addr, "t", table, compression, client=c))
                c.close()
            elif protocol == "rest":
                # The body is in the client's memory before the clock starts (the baseline's table is too).
                body = ipc_bytes(table, compression)
                seconds, _ = timed(lambda: rest_put(client, host.addr, "t", body))
                del body
            elif protocol == "rest-curl":
                path = write_body(ipc_bytes(table), tempfile.mkdtemp(dir=d))
                seconds, _ = timed(lambda: curl_put(host.addr, "t", path))
            else:
                seconds, _ = timed(lambda: json_put(client, host.addr, "t", table, compression))
        landed = host.count("t")
        host.close()
    return {"seconds": seconds, "landed": landed, **rss.mib()}


def one_send(dataset, n, scheme, create):
    """`arrowport_send` from one DuckDB host process to another: the sender's table (made off the clock from the
    same SQL as the baseline's data) to the receiver's existing, empty table, as one request."""
    with tempfile.TemporaryDirectory() as d:
        receiver = Host(d)
        receiver.host.sql(create)
        sender = hosts.start("py20", os.path.join(d, "sender.duckdb"))
        sender.sql(hosts.load_sql())
        sender.sql(f"CREATE TABLE src AS {DATA_SQL[dataset](n)}")
        sender.sql("CHECKPOINT")
        with hosts.PeakRss(sender.proc.pid) as rss:
            seconds, row = timed(lambda: sender.sql(f"FROM arrowport_send('{scheme}://{receiver.addr}', 't', query := 'FROM src')"))
        assert row[0][2] == n, row
        sender.close()
        landed = receiver.count("t")
        receiver.close()
    return {"seconds": seconds, "landed": landed, **rss.mib()}


def large_cases(results, dataset, table, base_seconds):
    n = table.num_rows
    mb = table.nbytes / 1e6
    cases = [("flight", None), ("rest", None), ("rest-curl", None)]
    if n == 1_000_000:
        cases += [("flight", "zstd"), ("flight", "lz4"), ("rest", "zstd"), ("rest", "lz4")]
    if n == 1_000_000 and dataset == "events":
        # base64 in JSON: the original's endpoint, buffered whole by design
        cases += [("json", None), ("json", "zstd"), ("json", "lz4")]
    create = table_sql(table)
    empty = ipc_bytes(table.schema.empty_table())
    cases += [("send-grpc", None), ("send-http", None)]
    for protocol, compression in cases:
        if protocol.startswith("send-"):
            run = median_run([one_send(dataset, n, protocol[5:], create) for _ in range(REPEAT)])
        else:
            run = median_run([one_large(table, protocol, compression, create, empty) for _ in range(REPEAT)])
        seconds = run["seconds"]
        row = {"dataset": dataset, "rows": n, "case": protocol + (f"+{compression}" if compression else ""),
               "rows_per_s": n / seconds, "mb_per_s": mb / seconds, "vs_baseline": base_seconds / seconds, **run}
        results.append(row)
        print(f"  {dataset:>6} {n:>10,} {row['case']:<12} {seconds:7.3f}s {row['rows_per_s'] / 1e6:6.2f} M rows/s "
              f"{row['vs_baseline']:5.2f}x  rss {row['rss_before_mib']:.0f} -> peak {row['rss_peak_mib']:.0f} MiB", flush=True)


def small_batches(results, protocol, clients):
    table = events(1000)
    body = ipc_bytes(table)
    with tempfile.TemporaryDirectory() as d:
        host = Host(d)
        latencies = []
        lock = threading.Lock()
        per_client = SMALL_REQUESTS // clients

        def worker():
            mine = []
            if protocol == "flight":
                left = iter(range(per_client))
                mine = report.timed_flight_puts(host.addr, "small", table, lambda: next(left, None) is not None)
            else:
                with httpx.Client(timeout=60) as client:
                    for _ in range(per_client):
                        t0 = time.perf_counter()
                        client.post(f"http://{host.addr}/streams/small", content=body, headers={"Content-Type": ARROW}).raise_for_status()
                        mine.append(time.perf_counter() - t0)
            with lock:
                latencies.extend(mine)

        seconds = report.run_threads([threading.Thread(target=worker) for _ in range(clients)])
        landed = host.count("small")
        host.close()
    sent = per_client * clients
    q = statistics.quantiles(latencies, n=100)
    row = {
        "dataset": "small", "rows": sent * 1000, "case": f"{protocol} x{clients}",
        "requests": sent, "seconds": seconds,
        "batches_per_min": sent / seconds * 60, "p50_ms": q[49] * 1000, "p99_ms": q[98] * 1000,
        "landed": landed, "expected": sent * 1000,
    }
    results.append(row)
    print(f"  small {row['case']}: {row['batches_per_min']:,.0f} batches/min, p50 {row['p50_ms']:.1f} ms, "
          f"p99 {row['p99_ms']:.1f} ms", flush=True)


def markdown(results):
    lines = ["| dataset | rows | case | seconds | M rows/s | MB/s | vs in-process | host RSS before / peak / after (MiB) |",
             "|---|---:|---|---:|---:|---:|---:|---|"]
    for r in results:
        if r["dataset"] == "small":
            continue
        rss = f"{r['rss_before_mib']:.0f} / {r['rss_peak_mib']:.0f} / {r['rss_after_mib']:.0f}" if "rss_peak_mib" in r else ""
        lines.append(f"| {r['dataset']} | {r['rows']:,} | {r['case']} | {r['seconds']:.3f} | {r['rows_per_s'] / 1e6:.2f} | "
                     f"{r['mb_per_s']:.0f} | {r['vs_baseline']:.2f}x | {rss} |")
    lines += ["", "| small batches (1,000 rows each) | requests | batches/min | p50 ms | p99 ms |", "|---|---:|---:|---:|---:|"]
    for r in results:
        if r["dataset"] == "small":
            lines.append(f"| {r['case']} | {r['requests']} | {r['batches_per_min']:,.0f} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} |")
    return "\n".join(lines)


def main():
    results = []
    bad = []
    print(f"arrowport bench on {platform.node()} ({os.cpu_count()} cores), DuckDB {duckdb.__version__}, quick={QUICK}", flush=True)
    datasets = [("events", n, events) for n in SIZES] + [("wide", 1_000_000, wide)]
    if ONLY == "small":
        datasets = []
    for dataset, n, make in datasets:
        table = make(n)
        base = median_run([baseline(table) for _ in range(REPEAT)])
        base_seconds = base["seconds"]
        results.append({"dataset": dataset, "rows": n, "case": "in-process baseline", "rows_per_s": n / base_seconds,
                        "mb_per_s": table.nbytes / 1e6 / base_seconds, "vs_baseline": 1.0, **base})
        print(f"  {dataset:>6} {n:>10,} baseline     {base_seconds:7.3f}s {n / base_seconds / 1e6:6.2f} M rows/s", flush=True)
        large_cases(results, dataset, table, base_seconds)
        del table
    for protocol in ("flight", "rest") if ONLY != "large" else ():
        for clients in (1, 8):
            small_batches(results, protocol, clients)
    for r in results:
        expected = r.get("expected", r["rows"])
        if r["landed"] != expected:
            bad.append(f"{r['dataset']} {r['case']}: landed {r['landed']} of {expected}")
    table = markdown(results)
    print()
    print(table)
    when = report.stamp()
    suffix = ("-quick" if QUICK else "") + (f"-{ONLY}" if ONLY else "")
    report.finish({"when": when, "host": platform.node(), "cores": os.cpu_count(), "duckdb": duckdb.__version__,
                   "quick": QUICK, "repeat": REPEAT, "results": results}, f"{when}{suffix}", bad)


if __name__ == "__main__":
    main()
