"""`make bench` (follow): following a stream, measured on one host (Python duckdb 2.0 with arrowport).

- latency: a producer sends 1,000-row requests (20 a second) into a followable stream while 1, then 8, followers
  read it live over Flight; for each request, the time from the producer's acknowledgement to each follower's
  receipt of its rows (negative when the rows reached the follower before the producer had its answer), p50/p99;
- catch-up: a history of ROWS rows read from the start by one follower, against a Flight SQL `SELECT *` of the
  same table through ADBC, rows/s each;
- producers: 8 producer processes sending 1,000-row requests, with no follower, with 8 follower processes, with
  8 followers held to FOLLOW_BENCH_FOLLOWER_CPU cores (0.5), and, with no follower and with 8, the host, the
  producers and the followers each in a CPU group of its own (FOLLOW_BENCH_SHARES cores, "0.8,0.5,0.3": three
  machines, so that the followers' decoding takes nothing from the host and the producers): requests/min, the
  host's CPU per request, each group's throttled periods, and every follower's rows against the rows produced;
  REPEAT rounds, for same-run ratios.
BENCH_QUICK=1: 1M rows of history and fewer requests. Writes bench/results/<timestamp>-follow.json.
"""
import json
import os
import platform
import statistics
import sys
import tempfile
import threading
import time

import pyarrow as pa
import pyarrow.flight as fl

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "test"))
import cpugroup  # noqa: E402
import hosts  # noqa: E402
import report  # noqa: E402
from clients import flight_put  # noqa: E402

QUICK = os.environ.get("BENCH_QUICK") == "1"
ROWS = 1_000_000 if QUICK else 10_000_000
LATENCY_REQUESTS = 100 if QUICK else 300
PRODUCER_REQUESTS = 200 if QUICK else 2400
REPEAT = 1 if QUICK else 3
# The followers' CPU group in the third producers case (followers on machines of their own); 0 skips that case.
FOLLOWER_CPU = float(os.environ.get("FOLLOW_BENCH_FOLLOWER_CPU", "0.5"))
# The last two producers cases (none and 8 followers): the host, the producers and the followers each in a CPU group
# of its own, of these cores (as three machines; their sum leaves the kernel and this script room on 2 cores).
SHARES = tuple(float(x) for x in os.environ.get("FOLLOW_BENCH_SHARES", "0.8,0.5,0.3").split(","))


class Host:
    def __init__(self, directory, options=""):
        self.host = hosts.start("py20", os.path.join(directory, "follow.duckdb"))
        self.host.sql(hosts.load_sql())
        self.addr = self.host.sql(f"SELECT address FROM arrowport_listen('127.0.0.1:0'{options})")[0][0]
        self.host.sql("CALL arrowport_create_stream('ev', follow := true)")

    def close(self):
        self.host.sql("SELECT arrowport_stop()")
        self.host.close()


def request(req, n=1000):
    return pa.table({"req": pa.array([req] * n, pa.int64()), "i": pa.array(range(n), pa.int64()),
                     "v": pa.array([float(req)] * n)})


def follower(addr, after, received, stop, counts=None):
    client = fl.connect(f"grpc://{addr}")
    reader = client.do_get(fl.Ticket(json.dumps({"follow": "ev", "after": after})))
    try:
        for chunk in reader:
            now = time.perf_counter()
            if received is not None:
                for r in set(chunk.data.column("req").to_pylist()):
                    received.setdefault(r, now)
            if counts is not None:
                counts.append(chunk.data.num_rows)
            if stop.is_set():
                break
    except fl.FlightError:
        pass
    finally:
        client.close()


def latency(followers):
    with tempfile.TemporaryDirectory() as d:
        host = Host(d)
        flight_put(host.addr, "ev", request(-1))
        stop = threading.Event()
        received = [dict() for _ in range(followers)]
        threads = [threading.Thread(target=follower, args=(host.addr, "end", received[n], stop)) for n in range(followers)]
        for t in threads:
            t.start()
        time.sleep(1)
        acked = {}
        client = fl.connect(f"grpc://{host.addr}")
        for r in range(LATENCY_REQUESTS):
            flight_put(host.addr, "ev", request(r), client=client)
            acked[r] = time.perf_counter()
            time.sleep(0.05)
        time.sleep(1)
        stop.set()
        flight_put(host.addr, "ev", request(-2), client=client)
        client.close()
        for t in threads:
            t.join(10)
        host.close()
    ms = [(got[r] - acked[r]) * 1000 for got in received for r in acked if r in got]
    missing = sum(1 for got in received for r in acked if r not in got)
    q = statistics.quantiles(ms, n=100)
    return {"case": f"commit to follower, {followers} follower(s)", "followers": followers, "requests": LATENCY_REQUESTS,
            "p50_ms": q[49], "p99_ms": q[98], "missing": missing}


def catch_up():
    import adbc_driver_flightsql.dbapi as flight_sql
    with tempfile.TemporaryDirectory() as d:
        host = Host(d, ", sql := 'read_only'")
        chunk = 1_000_000
        client = fl.connect(f"grpc://{host.addr}")
        for start in range(0, ROWS, chunk):
            n = min(chunk, ROWS - start)
            t = pa.table({"req": pa.array(range(start, start + n), pa.int64()), "i": pa.array(range(n), pa.int64()),
                          "v": pa.array([1.5] * n)})
            flight_put(host.addr, "ev", t, client=client)
        client.close()
        host.host.sql("CHECKPOINT")
        stop = threading.Event()
        counts = []
        started = time.perf_counter()
        t = threading.Thread(target=follower, args=(host.addr, 0, None, stop, counts))
        t.start()
        while sum(counts) < ROWS:
            time.sleep(0.01)
        follow_seconds = time.perf_counter() - started
        stop.set()
        flight_put(host.addr, "ev", request(-1, 1))
        t.join(10)
        conn = flight_sql.connect(f"grpc://{host.addr}")
        with conn.cursor() as cur:
            started = time.perf_counter()
            cur.execute("SELECT * FROM ev")
            table = cur.fetch_arrow_table()
            sql_seconds = time.perf_counter() - started
        conn.close()
        assert table.num_rows == ROWS + 1  # and the row that woke the follower to stop
        host.close()
    return {"case": f"catch-up of {ROWS:,} rows", "rows": ROWS, "follow_seconds": follow_seconds,
            "follow_rows_per_s": ROWS / follow_seconds, "flightsql_seconds": sql_seconds,
            "flightsql_rows_per_s": ROWS / sql_seconds, "vs_flightsql": sql_seconds / follow_seconds}


def counting_follower(addr, ready, out):
    """A follower process: every row from now on, counted, until the end marker (req = -2); puts its count."""
    import pyarrow.compute as pc
    client = fl.connect(f"grpc://{addr}")
    reader = client.do_get(fl.Ticket(json.dumps({"follow": "ev", "after": "end"})))
    ready.set()
    rows = 0
    for chunk in reader:
        marker = pc.equal(chunk.data.column("req"), -2)
        if pc.any(marker).as_py():
            rows += chunk.data.num_rows - pc.sum(marker.cast(pa.int64())).as_py()
            break
        rows += chunk.data.num_rows
    client.close()
    out.put(rows)


def producing(addr, c, per_client, ready, go, done):
    """A producer process: its requests once `go` is set; puts when it finished (CLOCK_MONOTONIC, shared by the
    machine's processes), so that the interpreter's exit is not timed."""
    client = fl.connect(f"grpc://{addr}")
    flight_put(addr, "ev", request(-3, 0), client=client)
    ready.set()
    go.wait(60)
    for r in range(per_client):
        flight_put(addr, "ev", request(c * 100_000 + r), client=client)
    done.put(time.monotonic())
    client.close()


def producers(followers, follower_cores=None, own=None):
    """8 producer processes, `followers` follower processes (in a CPU group of `follower_cores` cores, as followers
    on machines of their own, when given; with `own`, (host, producers, followers) cores, each party in a group of
    its own): the producers' requests/min, the host's CPU per request, and every follower's rows checked against
    the rows produced."""
    if own:
        follower_cores = own[2]
    import multiprocessing
    # Fresh interpreters: a process forked from this one, which has used gRPC, can hang in gRPC's own threads.
    ctx = multiprocessing.get_context("spawn")
    group = None
    with tempfile.TemporaryDirectory() as d:
        host = Host(d)
        flight_put(host.addr, "ev", request(-1))
        out = ctx.Queue()
        readies = [ctx.Event() for _ in range(followers)]
        procs = [ctx.Process(target=counting_follower, args=(host.addr, r, out)) for r in readies]
        for p in procs:
            p.start()
        if follower_cores and procs:
            group = cpugroup.Group("followers", follower_cores)
            for p in procs:
                group.add(p.pid)
        host_group = producer_group = None
        if own:
            host_group = cpugroup.Group("host", own[0])
            host_group.add(host.host.proc.pid)
            producer_group = cpugroup.Group("producers", own[1])
        for r in readies:
            r.wait(30)
        time.sleep(0.5)
        per_client = PRODUCER_REQUESTS // 8
        go = ctx.Event()
        set_up = [ctx.Event() for _ in range(8)]
        done = ctx.Queue()
        makers = [ctx.Process(target=producing, args=(host.addr, c, per_client, r, go, done)) for c, r in enumerate(set_up)]
        for p in makers:
            p.start()
            if producer_group:
                producer_group.add(p.pid)
        for r in set_up:
            r.wait(60)
        cpu = cpugroup.cpu_seconds(host.host.proc.pid)
        started = time.monotonic()
        go.set()
        seconds = max(done.get(timeout=600) for _ in makers) - started
        host_cpu = cpugroup.cpu_seconds(host.host.proc.pid) - cpu
        for p in makers:
            p.join()
        flight_put(host.addr, "ev", request(-2))
        counts = [out.get(timeout=120) for _ in procs]
        for p in procs:
            p.join(10)
        throttled = group.stat()["nr_throttled"] if group else None
        if group:
            group.close()
        shares = None
        if own:
            shares = {"host_cores": own[0], "host_throttled_periods": host_group.stat()["nr_throttled"],
                      "producer_cores": own[1], "producers_throttled_periods": producer_group.stat()["nr_throttled"],
                      "follower_cores": own[2]}
            producer_group.close()
            host_group.close()
        host.close()
    produced = per_client * 8 * 1000
    case = f"8 producers, {followers} followers"
    if own:
        case += f" (host, producers, followers in {own[0]}, {own[1]}, {own[2]} cores of their own)"
    elif group:
        case += f" (in {follower_cores} cores of their own)"
    return {"case": case, "followers": followers, "follower_cores": follower_cores if group else None, "shares": shares,
            "requests": per_client * 8, "seconds": seconds, "requests_per_min": per_client * 8 / seconds * 60,
            "host_cpu_ms_per_request": host_cpu / (per_client * 8) * 1000, "followers_throttled_periods": throttled,
            "missing": sum(produced - c for c in counts), "follower_rows": counts}


def main():
    print(f"follow bench on {platform.node()} ({os.cpu_count()} cores), quick={QUICK}", flush=True)
    results = []
    for n in (1, 8):
        r = latency(n)
        results.append(r)
        print(f"  {r['case']}: p50 {r['p50_ms']:.1f} ms, p99 {r['p99_ms']:.1f} ms, missing {r['missing']}", flush=True)
    r = catch_up()
    results.append(r)
    print(f"  {r['case']}: follow {r['follow_rows_per_s'] / 1e6:.2f} M rows/s, Flight SQL SELECT * "
          f"{r['flightsql_rows_per_s'] / 1e6:.2f} M rows/s ({r['vs_flightsql']:.2f}x)", flush=True)
    cases = [(0, None, None), (8, None, None)]
    if FOLLOWER_CPU > 0 and cpugroup.why_missing() is None:
        cases.append((8, FOLLOWER_CPU, None))
    else:
        print(f"  (no CPU group for the followers: {cpugroup.why_missing() or 'FOLLOW_BENCH_FOLLOWER_CPU=0'})")
    if cpugroup.why_missing() is None:
        cases += [(0, None, SHARES), (8, None, SHARES)]
    else:
        print(f"  (no CPU groups for the host, producers and followers: {cpugroup.why_missing()})")
    ratios = {}
    for _ in range(REPEAT):
        rates = {}
        for n, cores, own in cases:
            r = producers(n, cores, own)
            results.append(r)
            rates[(n, cores, own)] = r["requests_per_min"]
            print(f"  {r['case']}: {r['requests_per_min']:,.0f} requests/min, host CPU {r['host_cpu_ms_per_request']:.2f} ms "
                  f"per request, followers' rows missing {r['missing']}", flush=True)
        # Same-round ratios: 8 followers against none, with the same CPU groups.
        for n, cores, own in cases:
            base = (0, None, own)
            if n and base in rates:
                what = "own groups" if own else (f"followers in {cores} cores" if cores else "shared cores")
                ratios.setdefault(what, []).append(rates[(n, cores, own)] / rates[base])
    for what, rs in ratios.items():
        r = {"case": f"producers with 8 followers against none ({what})", "ratios": rs, "median": statistics.median(rs)}
        results.append(r)
        print(f"  {r['case']}: {', '.join(f'{x:.2f}x' for x in rs)} (median {r['median']:.2f}x)", flush=True)
    bad = [f"{r['case']}: {r['missing']} deliveries missing" for r in results if r.get("missing")]
    when = report.stamp()
    report.finish({"when": when, "host": platform.node(), "cores": os.cpu_count(), "quick": QUICK, "results": results},
                  f"{when}-follow" + ("-quick" if QUICK else ""), bad)


if __name__ == "__main__":
    main()
