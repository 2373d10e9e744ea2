"""`make bench`, part: small requests sustained, and what checkpoints do to their latency.

Eight clients send 1,000-row requests (the events table) for STEADY_SECONDS (60; 10 with BENCH_QUICK=1) into a
fresh host (Python duckdb 2.0, default settings), over Flight DoPut and over REST, each case twice: arrowport
managing checkpoints (the default, `checkpoint_wal` 64 MiB) and DuckDB's own (`checkpoint_wal := 0`). Meanwhile
- the host's own session commits a one-row INSERT into a table of its own every 100 ms (its latency says whether
  the operator's session is slowed),
- the write-ahead log's size is sampled every 10 ms (its peak),
and afterwards the host's /metrics give the checkpoints arrowport ran and their time. Reports requests/min,
p50/p99/p99.9/max latency, the number of requests over 20 ms, the WAL peak, the checkpoints, and checks that every
acknowledged row landed. Writes bench/results/<timestamp>-steady.json.
"""
import multiprocessing
import os
import platform
import resource
import statistics
import sys
import tempfile
import threading
import time

import duckdb
import httpx

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "test"))
import hosts  # noqa: E402
import report  # noqa: E402
from clients import ipc_bytes  # noqa: E402

QUICK = os.environ.get("BENCH_QUICK") == "1"
SECONDS = float(os.environ.get("STEADY_SECONDS", "10" if QUICK else "60"))
CLIENTS = 8
ARROW = "application/vnd.apache.arrow.stream"


def events(n):
    return duckdb.sql(f"""SELECT range::BIGINT AS id, (1700000000000 + range)::BIGINT AS "timestamp",
        ((range % 1000) * 0.5)::DOUBLE AS value, ['cpu', 'mem', 'disk', 'net'][(range % 4) + 1] AS category,
        ((range * 7) % 100) / 3.0 AS metric FROM range({n})""").to_arrow_table()


def metric(text, name):
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and not line.startswith("#"):
            key = line.split()[0]
            if key == name or key.startswith(name + "{") and 'outcome="ok"' in key:
                total += float(line.split()[-1])
    return total


def cpu_seconds(pid):
    """A process's user + system CPU time so far (from /proc)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children_cpu():
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def case(protocol, checkpoints):
    table = events(1000)
    body = ipc_bytes(table)
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "port.duckdb")
        host = hosts.start("py20", path)
        host.sql(hosts.load_sql())
        host.sql("CREATE TABLE mine (i INTEGER, at_ TIMESTAMP)")
        option = "" if checkpoints == "arrowport" else ", checkpoint_wal := 0"
        addr = host.sql(f"FROM arrowport_listen('127.0.0.1:0'{option})")[0][1]
        threshold = host.sql("SELECT current_setting('checkpoint_threshold')")[0][0]
        stop = threading.Event()
        latencies = []
        wal_peak = [0]
        own = []

        def sample_wal():
            while not stop.is_set():
                try:
                    wal_peak[0] = max(wal_peak[0], os.path.getsize(path + ".wal"))
                except OSError:
                    pass
                time.sleep(0.01)

        def operator():
            i = 0
            while not stop.is_set():
                t0 = time.perf_counter()
                host.sql(f"INSERT INTO mine VALUES ({i}, now())")
                own.append(time.perf_counter() - t0)
                i += 1
                time.sleep(0.1)

        def client(stop, out):
            mine = []
            if protocol == "flight":
                mine = report.timed_flight_puts(addr, "small", table, lambda: not stop.is_set())
            else:
                # A keep-alive HTTP/1.1 connection and a request made once, as a load generator sends it (httpx's
                # own work per request is about a millisecond of this machine's two cores).
                import socket
                host_, port = addr.rsplit(":", 1)
                request = (f"POST /streams/small HTTP/1.1\r\nHost: {addr}\r\nContent-Type: {ARROW}\r\n"
                           f"Content-Length: {len(body)}\r\n\r\n").encode() + body
                s = socket.create_connection((host_, int(port)))
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                pending = b""
                while not stop.is_set():
                    t0 = time.perf_counter()
                    s.sendall(request)
                    while b"\r\n\r\n" not in pending:
                        pending += s.recv(65536)
                    head, pending = pending.split(b"\r\n\r\n", 1)
                    length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                                      if line.lower().startswith(b"content-length:")))
                    while len(pending) < length:
                        pending += s.recv(65536)
                    pending = pending[length:]
                    if not head.startswith(b"HTTP/1.1 200"):
                        raise RuntimeError(head.decode(errors="replace"))
                    mine.append(time.perf_counter() - t0)
                s.close()
            out.put(mine)

        # Each client is a process of its own (as clients on other machines would be; threads of one Python
        # process would measure its interpreter lock).
        ctx = multiprocessing.get_context("fork")
        stop_clients, out = ctx.Event(), ctx.Queue()
        procs = [ctx.Process(target=client, args=(stop_clients, out)) for _ in range(CLIENTS)]
        threads = [threading.Thread(target=sample_wal), threading.Thread(target=operator)]
        host_cpu, clients_cpu = cpu_seconds(host.proc.pid), children_cpu()
        started = time.perf_counter()
        for t in procs + threads:
            t.start()
        time.sleep(SECONDS)
        stop_clients.set()
        for _ in procs:
            latencies.extend(out.get(timeout=120))
        seconds = time.perf_counter() - started
        stop.set()
        for t in procs + threads:
            t.join()
        host_cpu, clients_cpu = cpu_seconds(host.proc.pid) - host_cpu, children_cpu() - clients_cpu
        text = httpx.get(f"http://{addr}/metrics").text
        landed = host.sql("SELECT count(*) FROM small")[0][0]
        host.sql("SELECT arrowport_stop()")
        restored = host.sql("SELECT current_setting('checkpoint_threshold')")[0][0]
        host.close()
    q = statistics.quantiles(latencies, n=1000)
    oq = statistics.quantiles(own, n=100)
    row = {
        "case": f"{protocol}, {checkpoints} checkpoints", "protocol": protocol, "checkpoints": checkpoints,
        "clients": CLIENTS, "seconds": seconds, "requests": len(latencies),
        "requests_per_min": len(latencies) / seconds * 60,
        "p50_ms": q[499] * 1000, "p99_ms": q[989] * 1000, "p999_ms": q[998] * 1000, "max_ms": max(latencies) * 1000,
        "over_20ms": sum(1 for x in latencies if x > 0.02),
        "wal_peak_mib": wal_peak[0] / 2**20,
        "arrowport_checkpoints": metric(text, "arrowport_checkpoints_total"),
        "arrowport_checkpoint_seconds": metric(text, "arrowport_checkpoint_seconds_total"),
        "operator_insert_p50_ms": oq[49] * 1000, "operator_insert_p99_ms": oq[98] * 1000,
        "operator_insert_max_ms": max(own) * 1000,
        "threshold_while_listening": threshold, "threshold_after_stop": restored,
        "host_cpu_ms_per_request": host_cpu / len(latencies) * 1000,
        "clients_cpu_ms_per_request": clients_cpu / len(latencies) * 1000,
        "cores_used": (host_cpu + clients_cpu) / seconds,
        "landed": landed, "expected": len(latencies) * 1000,
    }
    print(f"  {row['case']}: {row['requests_per_min']:,.0f} requests/min, p50 {row['p50_ms']:.1f} ms, "
          f"p99 {row['p99_ms']:.1f} ms, p99.9 {row['p999_ms']:.1f} ms, max {row['max_ms']:.0f} ms, "
          f"{row['over_20ms']} over 20 ms, WAL peak {row['wal_peak_mib']:.0f} MiB, "
          f"{row['arrowport_checkpoints']:.0f} checkpoints ({row['arrowport_checkpoint_seconds']:.2f} s), "
          f"operator's INSERT p50 {row['operator_insert_p50_ms']:.1f} / p99 {row['operator_insert_p99_ms']:.1f} ms, "
          f"threshold {threshold} -> {restored}; CPU per request host {row['host_cpu_ms_per_request']:.2f} ms, "
          f"clients {row['clients_cpu_ms_per_request']:.2f} ms, {row['cores_used']:.2f} cores busy", flush=True)
    return row


def main():
    print(f"steady small requests on {platform.node()} ({os.cpu_count()} cores), {CLIENTS} clients, "
          f"{SECONDS:.0f} s per case", flush=True)
    results, bad = [], []
    for protocol in ("flight", "rest"):
        for checkpoints in ("arrowport", "duckdb"):
            r = case(protocol, checkpoints)
            results.append(r)
            if r["landed"] != r["expected"]:
                bad.append(f"{r['case']}: landed {r['landed']} of {r['expected']} acknowledged")
    print("\n| case | requests/min | p50 ms | p99 ms | p99.9 ms | max ms | WAL peak MiB | checkpoints | operator's INSERT p99 ms |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        print(f"| {r['case']} | {r['requests_per_min']:,.0f} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {r['p999_ms']:.1f} | "
              f"{r['max_ms']:.0f} | {r['wal_peak_mib']:.0f} | {r['arrowport_checkpoints']:.0f} | {r['operator_insert_p99_ms']:.1f} |")
    when = report.stamp()
    report.finish({"when": when, "host": platform.node(), "cores": os.cpu_count(), "duckdb": duckdb.__version__,
                   "quick": QUICK, "seconds": SECONDS, "results": results}, f"{when}-steady" + ("-quick" if QUICK else ""), bad)


if __name__ == "__main__":
    main()
