"""`make bench` (its lake half; `make bench-lake` alone): many arrowport hosts landing into one DuckLake (catalog in
PostgreSQL, data files in moto's S3), each case in a fresh world (test/lake.py), on this one machine.

Cases:
- small: 1,000-row requests with an idempotency key each, 8 REST clients per host, for LAKE_BENCH_SECONDS
  (default 20), with 1, 2 and 3 hosts: aggregate rows/s and lake commits/s (DuckLake snapshots made), request
  latency (p50 / p99) and the mean write of a request (its group's transaction to COMMIT, from each host's
  `arrowport_write_duration_seconds`), against the same clients into one host's local DuckDB file;
- large: 1M-row requests, LAKE_BENCH_LARGE_CLIENTS (default 2) clients per host each sending
  LAKE_BENCH_LARGE_REQUESTS (default 3) one after another, 1, 2 and 3 hosts at once, into the lake, against the same
  clients of one host into a local DuckDB file (several requests, so that a host's rate is measured over seconds
  rather than over one request of under a second; two clients, so that a host has the next request to work on while
  the object store takes the last one's file);
- files: the lake table's Parquet files after the small 3-host case, and after `arrowport_maintain`;
all of it once with PostgreSQL on loopback and once LAKE_BENCH_PG_DELAYS (default "0,2") ms of round trip away.
Every case checks that the rows landed equal the rows acknowledged. Prints a Markdown table and writes
bench/results/<timestamp>-lake.json.

Each arrowport host runs in a CPU group of its own (test/cpugroup.py), LAKE_BENCH_HOST_CPU cores (default 0.25),
as a host on a machine of its own would: PostgreSQL, the object store and the clients stay outside the groups, so
on this two-core machine three hosts and everything they need fit without starving each other. Each case reports
every host's CPU use (cores: CPU time over wall time) and the groups' throttled periods, so it shows that each
host used its share. LAKE_BENCH_HOST_CPU=0 (or a machine where no group can be made, which the output says) runs
the hosts unconstrained."""
import os
import sys
import tempfile
import threading
import time

import httpx
import pyarrow as pa

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "test"))
import hosts  # noqa: E402
import lake  # noqa: E402
from clients import ipc_bytes  # noqa: E402

import report  # noqa: E402  (bench/, this script's own directory)
import cpugroup  # noqa: E402

SECONDS = float(os.environ.get("LAKE_BENCH_SECONDS", "20"))
CLIENTS = 8
# DuckLake's data inlining: a commit of up to this many rows per table goes into the catalog, not a new Parquet
# file (arrowport_maintain flushes them into files). The default, 0, writes a file per commit (arrowport_maintain
# merges them): inlining turns every value into SQL for the catalog, which costs a small request more than its file.
INLINE_ROWS = int(os.environ.get("LAKE_BENCH_INLINE", "0"))
# The lake hosts' listen option group_window (seconds): a group commit waits this long after its first request for
# more (the local-file case keeps 0, its best).
GROUP_WINDOW = float(os.environ.get("LAKE_BENCH_GROUP_WINDOW", "0.05"))
# The lake hosts' listen option commit_retry_wait (seconds): DuckLake's pause before it retries a grouped commit
# that lost a race (unset: arrowport's default, 0.01; DuckLake's own is 0.1).
RETRY_WAIT = os.environ.get("LAKE_BENCH_COMMIT_RETRY_WAIT")
# An idempotency key on every request (LAKE_BENCH_KEYS=0: none).
KEYS = os.environ.get("LAKE_BENCH_KEYS", "1") != "0"
ARROW = "application/vnd.apache.arrow.stream"
# The large case's clients per host, and the 1M-row requests each sends one after another.
LARGE_CLIENTS = int(os.environ.get("LAKE_BENCH_LARGE_CLIENTS", "2"))
LARGE_REQUESTS = int(os.environ.get("LAKE_BENCH_LARGE_REQUESTS", "3"))
HOST_CPU = float(os.environ.get("LAKE_BENCH_HOST_CPU", "0.25"))
# Round trips (ms) added between the hosts and PostgreSQL, one whole run each: 0 is loopback; others put PostgreSQL
# behind a relay that delays each direction by half of it (test/delay_relay.py; this machine's kernel has no netem),
# as a catalog on another machine would be.
PG_DELAYS = [float(x) for x in os.environ.get("LAKE_BENCH_PG_DELAYS", "0,2").split(",") if x.strip()]
NO_GROUP = "LAKE_BENCH_HOST_CPU=0" if HOST_CPU <= 0 else cpugroup.why_missing()


class Groups:
    """A CPU group of its own for each of `n` hosts (none when groups cannot be made). A host starts inside its
    group (`world.host(..., cpu_group=groups[i])`), as on a machine of its own: DuckDB sizes its thread pool by the
    CPU it finds at start (one thread for a quarter core) instead of by this machine's two cores, whose second
    thread would only take turns with the first inside the share."""

    def __init__(self, label, n):
        self.groups = [] if NO_GROUP else [cpugroup.Group(f"{label}-{i}", HOST_CPU) for i in range(n)]

    def __getitem__(self, i):
        return self.groups[i] if self.groups else None

    def close(self):
        for g in self.groups:
            g.close()


class Held:
    """What each host used while the block ran (cores: CPU time over wall time) and how often its group was
    throttled."""

    def __init__(self, hs, groups):
        self.hs, self.groups = hs, [groups[i] for i in range(len(hs))] if groups.groups else []

    def __enter__(self):
        self.started = time.time()
        self.cpu = [cpugroup.cpu_seconds(h.proc.pid) for h in self.hs]
        self.throttled = [g.stat()["nr_throttled"] for g in self.groups]
        return self

    def __exit__(self, *exc):
        wall = time.time() - self.started
        self.cores = [(cpugroup.cpu_seconds(h.proc.pid) - c) / wall for h, c in zip(self.hs, self.cpu)]
        self.throttled = [g.stat()["nr_throttled"] - t for g, t in zip(self.groups, self.throttled)]

    def report(self):
        return {"host_cores": [round(c, 3) for c in self.cores], "throttled_periods": self.throttled,
                "host_cpu_share": None if NO_GROUP else HOST_CPU,
                "host_threads": [int(h.sql("SELECT current_setting('threads')")[0][0]) for h in self.hs]}


def quantile(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] if values else None


def start_hosts(world, groups, paths, **options):
    """A lake host per path, each started inside its CPU group (the groups are closed if one fails to start)."""
    hs = []
    try:
        for i, path in enumerate(paths):
            hs.append(world.host(path, cpu_group=groups[i], **options))
    except BaseException:
        for h in hs:
            h.close()
        groups.close()
        raise
    return hs


def small(world, directory, n_hosts, local=False):
    groups = Groups(f"small{n_hosts}", n_hosts)
    hs = start_hosts(world, groups, [os.path.join(directory, f"h{i}.duckdb") for i in range(n_hosts)],
                     inline_rows=INLINE_ROWS, options="" if local else f", group_window := {GROUP_WINDOW}"
                     + ("" if RETRY_WAIT is None else f", commit_retry_wait := {RETRY_WAIT}"))
    for h in hs:
        h.sql("FROM arrowport_create_stream('ev', target := '" + ("main.ev" if local else "lake.main.ev") + "')")
    acked = [0] * (CLIENTS * n_hosts)
    latencies = []
    errors = []
    held = Held(hs, groups)
    stop = time.time() + SECONDS

    def client(i):
        h = hs[i % n_hosts]
        http = httpx.Client(timeout=60)
        seq = 0
        while time.time() < stop:
            t = pa.table({"c": pa.array([i] * 1000, pa.int32()), "q": pa.array([seq] * 1000, pa.int32()),
                          "r": pa.array(range(1000), pa.int32())})
            body = ipc_bytes(t)
            while True:
                headers = {"Content-Type": ARROW}
                if KEYS:
                    headers["Idempotency-Key"] = f"{i}-{seq}"
                sent = time.perf_counter()
                r = http.post(f"http://{h.addr}/streams/ev", content=body, headers=headers)
                if r.status_code == 200:
                    latencies.append(time.perf_counter() - sent)
                    acked[i] += 1000
                    break
                errors.append(r.status_code)
                time.sleep(0.05)
            seq += 1

    snapshots_before = 0 if local else hs[0].sql("SELECT count(*) FROM lake.snapshots()")[0][0]
    try:
        with held:
            elapsed = report.run_threads([threading.Thread(target=client, args=(i,)) for i in range(CLIENTS * n_hosts)])
        report_held = held.report()
    finally:
        groups.close()  # the rest (counting, metrics) runs unconstrained
    table = "main.ev" if local else "lake.main.ev"
    landed = sum(h.sql(f"SELECT count(*) FROM {table}")[0][0] for h in (hs if local else hs[:1]))
    commits = None if local else hs[0].sql("SELECT count(*) FROM lake.snapshots()")[0][0] - snapshots_before
    metrics = [httpx.get(f"http://{h.addr}/metrics").text.splitlines() for h in hs]

    def total(name):
        return sum(float(line.split()[-1]) for lines in metrics for line in lines if line.startswith(name + "{"))

    retries = int(total("arrowport_commit_retries_total"))
    # Each request's write: its group's transaction, from the look at its table to COMMIT (the lake commit's latency
    # as a request waits for it), mean over requests.
    writes = total("arrowport_write_duration_seconds_count")
    write_ms = total("arrowport_write_duration_seconds_sum") / writes * 1000 if writes else None
    return hs, {"hosts": n_hosts, "rows": sum(acked), "landed": landed, "seconds": elapsed, "rows_per_s": sum(acked) / elapsed,
                "commits_per_s": None if commits is None else commits / elapsed, "commit_retries": retries,
                "client_retries": len(errors), "requests_per_s": len(latencies) / elapsed,
                "requests_per_commit": None if not commits else len(latencies) / commits,
                "p50_ms": quantile(latencies, 0.5) * 1000, "p99_ms": quantile(latencies, 0.99) * 1000,
                "commit_ms": write_ms, **report_held}


def close(hs):
    for h in hs:
        h.sql("SELECT arrowport_stop()")
        h.close()


def large(world, directory, n_hosts):
    """1M-row requests from LARGE_CLIENTS clients per host (LARGE_REQUESTS each, one after another), the hosts at
    once, into the lake; and (one host) the same into a local file."""
    groups = Groups(f"large{n_hosts}", n_hosts)
    hs = start_hosts(world, groups, [os.path.join(directory, f"big{i}.duckdb") for i in range(n_hosts)])
    n = 1_000_000
    table = pa.table({"id": pa.array(range(n), pa.int64()), "v": pa.array([i * 0.5 for i in range(n)], pa.float64()),
                      "s": pa.array([f"s{i % 1000}" for i in range(n)])})
    body = ipc_bytes(table)
    hs[0].sql("CREATE TABLE lake.main.big (id BIGINT, v DOUBLE, s VARCHAR)")
    hs[0].sql("CREATE TABLE main.big (id BIGINT, v DOUBLE, s VARCHAR)")
    for h in hs:
        h.sql("FROM arrowport_create_stream('lake', target := 'lake.main.big')")
        h.sql("FROM arrowport_create_stream('local', target := 'main.big')")
    out = {}
    cases = [("lake", hs)] + ([("local", hs[:1])] if n_hosts == 1 else [])
    for name, senders in cases:
        codes = []

        def put(h):
            for _ in range(LARGE_REQUESTS):
                r = httpx.post(f"http://{h.addr}/streams/{name}", content=body, headers={"Content-Type": ARROW},
                               timeout=600)
                codes.append(r.status_code)

        with Held(senders, groups) as held:
            seconds = report.run_threads([threading.Thread(target=put, args=(h,))
                                          for h in senders for _ in range(LARGE_CLIENTS)])
        requests = LARGE_CLIENTS * LARGE_REQUESTS * len(senders)
        assert codes == [200] * requests, codes
        target = "lake.main.big" if name == "lake" else "main.big"
        rows = n * requests
        out[name] = {"hosts": len(senders), "rows": rows, "seconds": seconds, "rows_per_s": rows / seconds,
                     "landed": hs[0].sql(f"SELECT count(*) FROM {target}")[0][0], **held.report()}
    close(hs)
    groups.close()
    return out


def main():
    why = lake.why_missing()
    if why:
        print(f"lake bench skipped: {why}")
        return
    if NO_GROUP:
        print(f"lake bench: hosts run unconstrained ({NO_GROUP})", flush=True)
    else:
        print(f"lake bench: each host in a CPU group of {HOST_CPU} cores", flush=True)
    results = {"when": report.stamp(), "seconds": SECONDS, "host_cpu": None if NO_GROUP else HOST_CPU,
               "inline_rows": INLINE_ROWS, "group_window": GROUP_WINDOW, "commit_retry_wait": RETRY_WAIT, "keys": KEYS,
               "unconstrained_because": NO_GROUP, "clients_per_host": CLIENTS,
               "large_clients_per_host": LARGE_CLIENTS, "large_requests_per_client": LARGE_REQUESTS, "runs": []}
    bad, tables = [], []
    for delay in PG_DELAYS:
        print(f"PostgreSQL {delay} ms of round trip away" if delay else "PostgreSQL on loopback", flush=True)
        run, lines = one_run(delay, bad)
        results["runs"].append(run)
        tables.append((delay, lines))
    for delay, lines in tables:
        print(f"\n{'PostgreSQL on loopback' if not delay else f'PostgreSQL {delay} ms of round trip away, behind a delaying relay'}:\n")
        print("\n".join(lines))
    report.finish(results, f"{results['when']}-lake", bad)


def one_run(delay, bad):
    """Every case with the catalog `delay` ms of round trip away: its results, and its table's lines."""
    results = {"pg_delay_ms": delay, "small": [], "files": None, "large": None}
    for n_hosts, local in [(1, True), (1, False), (2, False), (3, False)]:
        with tempfile.TemporaryDirectory() as d:
            world = lake.World(d, pg_delay_ms=delay)
            try:
                hs, row = small(world, d, n_hosts, local)
                row["target"] = "local file" if local else "lake"
                if row["landed"] != row["rows"]:
                    bad.append(f"{n_hosts} hosts {row['target']}: landed {row['landed']} of {row['rows']}")
                if n_hosts == 3:
                    files = len(world.s3.objects("data/main/ev/"))
                    hs[0].sql("FROM arrowport_maintain('lake', older_than := 0)")
                    results["files"] = {"before": files, "after": len(world.s3.objects("data/main/ev/"))}
                close(hs)
                results["small"].append(row)
                print(f"  small {row['target']:>10} {n_hosts} host(s): {row['rows_per_s']:9.0f} rows/s  "
                      f"commits/s {row['commits_per_s'] or 0:6.1f}  commit retries {row['commit_retries']}  "
                      f"p50/p99 {row['p50_ms']:.0f}/{row['p99_ms']:.0f} ms  commit {row['commit_ms'] or 0:.0f} ms  "
                      f"host cores {row['host_cores']}  "
                      f"throttled {row['throttled_periods']}", flush=True)
            finally:
                world.close()
    results["large"] = {}
    for n_hosts in (1, 2, 3):
        with tempfile.TemporaryDirectory() as d:
            world = lake.World(d, pg_delay_ms=delay)
            try:
                results["large"][n_hosts] = large(world, d, n_hosts)
                for case in results["large"][n_hosts].values():
                    if case["landed"] != case["rows"]:
                        bad.append(f"1M-row requests, {n_hosts} hosts: landed {case['landed']} of {case['rows']}")
            finally:
                world.close()
    one = next(r for r in results["small"] if r["hosts"] == 1 and r["target"] == "lake")["rows_per_s"]
    lines = ["| case | hosts | rows/s | requests/s | lake commits/s (requests each) | p50 / p99 ms | commit ms | each host's cores | vs one lake host |",
             "|---|---:|---:|---:|---:|---:|---:|---|---:|"]
    for r in results["small"]:
        commits = "" if r["commits_per_s"] is None else f"{r['commits_per_s']:.1f} ({r['requests_per_commit']:.1f})"
        cores = " ".join(f"{c:.2f}" for c in r["host_cores"])
        lines.append(f"| 1,000-row requests, {CLIENTS} clients per host, into {r['target']} | {r['hosts']} | {r['rows_per_s']:,.0f} | "
                     f"{r['requests_per_s']:,.0f} | {commits} | {r['p50_ms']:.0f} / {r['p99_ms']:.0f} | {r['commit_ms'] or 0:.0f} | {cores} | "
                     f"{r['rows_per_s'] / one:.2f}x |")
    big = results["large"]
    local = big[1]["local"]["rows_per_s"]
    for n_hosts, cases in big.items():
        lake_rate = cases["lake"]["rows_per_s"]
        cores = " ".join(f"{c:.2f}" for c in cases["lake"]["host_cores"])
        lines.append(f"| 1M-row requests, {LARGE_CLIENTS} clients per host ({LARGE_REQUESTS} each), hosts at once, into the lake | {n_hosts} | "
                     f"{lake_rate:,.0f} | | | | | {cores} | {lake_rate / big[1]['lake']['rows_per_s']:.2f}x "
                     f"({lake_rate / local:.2f}x of one host's into a local file, {local:,.0f} rows/s) |")
    files = results["files"]
    lines.append(f"| Parquet files after the 3-host case / after arrowport_maintain | | {files['before']} / {files['after']} | | | | | | |")
    return results, lines


if __name__ == "__main__":
    main()
