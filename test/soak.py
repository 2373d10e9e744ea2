"""The exactly-once soak: clients that retry with idempotency keys against a host that is killed with SIGKILL.

`make soak` runs it for SOAK_SECONDS (default 300); `make test` runs a short slice (test/python/test_soak.py).
Eight clients (Flight and REST alternately) send requests of mixed sizes (1 row to 1M rows, most of them small),
each with its own key, and log every acknowledgement. Every request's rows carry the request's number, so the
database can be checked request by request. Unless SOAK_KILLS=0, the harness kills the host with SIGKILL at
random moments, restarts it on the same database file, and the clients retry every unacknowledged request with
its key until it is acknowledged. At the end, every acknowledged request must be present exactly once and whole
(nothing lost, nothing doubled, nothing partial). With SOAK_KILLS=0 the host's RSS is sampled: it must not grow
after the warm-up. The last line is the plain summary `soak: N passed, M failed` (requests; violations).
"""
import os
import random
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "test"))

import httpx  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.flight as fl  # noqa: E402

import hosts  # noqa: E402
from clients import flight_put  # noqa: E402

ARROW = "application/vnd.apache.arrow.stream"
SIZES = [1, 10, 100, 1000, 1000, 1000, 10_000, 100_000, 1_000_000]
WEIGHTS = [10, 20, 20, 20, 10, 10, 6, 3, 1]


def table(req, rows):
    return pa.table({
        "req": pa.array([req] * rows, pa.int64()),
        "i": pa.array(range(rows), pa.int64()),
        "v": pa.array([float(x % 97) for x in range(rows)], pa.float64()),
    })


def ipc(t):
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, t.schema) as w:
        w.write_table(t, max_chunksize=65_536)
    return sink.getvalue().to_pybytes()


class Harness:
    def __init__(self, path, seed):
        self.path = path
        self.rng = random.Random(seed)
        self.lock = threading.Lock()
        self.addr = None
        self.up = threading.Event()
        self.host = None
        self.acked = {}  # req -> rows
        self.sent = 0
        self.retries = 0
        self.replays = 0
        self.kills = 0
        self.errors = []
        self.unopenable = None
        self.start_host()

    def start_host(self):
        self.host = hosts.start("py20", self.path)
        try:
            self.host.sql(hosts.load_sql())
        except (hosts.HostDied, hosts.HostError) as e:
            # DuckDB itself could not open the file after the kill: not arrowport's to repair; stop the run.
            self.unopenable = f"after kill {self.kills}, DuckDB could not open the database: {str(e)[-300:]}"
            raise
        self.addr = self.host.sql("SELECT address FROM arrowport_listen('127.0.0.1:0')")[0][0]
        self.up.set()

    def kill(self):
        self.up.clear()
        self.host.proc.kill()
        self.host.proc.wait()
        self.kills += 1
        self.start_host()

    def rss_mib(self):
        return hosts.rss_mib(self.host.proc.pid)

    def send(self, client, req, rows, key, t):
        """One attempt; the acknowledgement, or None when the outcome is unknown or the host said retry."""
        while not self.up.wait(1):
            if self.unopenable:
                return None
        addr = self.addr
        try:
            if client % 2:
                r = httpx.post(f"http://{addr}/streams/soak", content=ipc(t), timeout=120,
                               headers={"Content-Type": ARROW, "Idempotency-Key": key})
                if r.status_code in (409, 503):
                    time.sleep(0.05)
                    return None
                if r.status_code != 200:
                    self.errors.append(f"request {req}: HTTP {r.status_code} {r.text[:200]}")
                    return None
                return r.json()
            return flight_put(addr, "soak", t, chunk=65_536, key=key, timeout=120)
        except Exception:  # noqa: BLE001  any failure of an attempt leaves its outcome unknown: retry with the key
            return None

    def client(self, n, deadline):
        while time.monotonic() < deadline and not self.unopenable:
            with self.lock:
                req = self.sent
                self.sent += 1
            rows = self.rng.choices(SIZES, WEIGHTS)[0]
            t = table(req, rows)
            key = f"soak-{req}"
            attempts = 0
            while True:
                ack = self.send(n, req, rows, key, t)
                if ack is not None or self.unopenable:
                    break
                attempts += 1
                if attempts > 200:
                    self.errors.append(f"request {req} was never acknowledged")
                    break
            with self.lock:
                self.retries += attempts
                if ack is not None:
                    if ack.get("rows") != rows:
                        self.errors.append(f"request {req}: acknowledged {ack.get('rows')} rows of {rows}")
                    self.acked[req] = rows
                    self.replays += bool(ack.get("replayed"))

    def killer(self, deadline, stop):
        while time.monotonic() < deadline and not stop.is_set():
            time.sleep(self.rng.uniform(0.5, 3.0))
            if time.monotonic() < deadline:
                try:
                    self.kill()
                except (hosts.HostDied, hosts.HostError):
                    stop.set()
                    return

    def check(self):
        """Violations: acknowledged requests missing or partial, rows doubled, rows of unacknowledged requests."""
        rows = dict(self.host.sql("SELECT req, count(*) FROM soak GROUP BY req"))
        dup = self.host.sql("SELECT count(*) - count(DISTINCT (req, i)) FROM soak")[0][0]
        lost = sum(1 for req, n in self.acked.items() if rows.get(req, 0) < n)
        partial = sum(1 for req, n in rows.items() if req in self.acked and n != self.acked[req] and n > 0)
        stray = {req: n for req, n in rows.items() if req not in self.acked}
        return lost, dup, partial, stray


def main():
    seconds = float(os.environ.get("SOAK_SECONDS", "300"))
    kills = os.environ.get("SOAK_KILLS", "1") != "0"
    seed = int(os.environ.get("SOAK_SEED") or random.randrange(1 << 32))
    path = os.environ.get("SOAK_DB", "/tmp/arrowport-soak.duckdb")
    for f in (path, path + ".wal"):
        if os.path.exists(f):
            os.remove(f)
    print(f"soak: seed {seed}, {seconds:.0f} s, {'with' if kills else 'without'} kills", flush=True)
    h = Harness(path, seed)
    deadline = time.monotonic() + seconds
    stop = threading.Event()
    rss = []
    threads = [threading.Thread(target=h.client, args=(n, deadline)) for n in range(8)]
    for t in threads:
        t.start()
    if kills:
        killer = threading.Thread(target=h.killer, args=(deadline, stop))
        killer.start()
    else:
        while time.monotonic() < deadline:
            time.sleep(1)
            duck = h.host.sql("SELECT coalesce(sum(memory_usage_bytes), 0) // 1048576 FROM duckdb_memory()")[0][0]
            rss.append((h.rss_mib(), duck))
    for t in threads:
        t.join()
    if kills:
        stop.set()
        killer.join()
    if h.unopenable:
        print(f"soak: {h.kills} kills, {h.sent} requests, {h.retries} retries, {h.replays} replays")
        print(f"soak: stopped: {h.unopenable}")
        print(f"soak: {len(h.acked)} passed, 1 failed")
        return 3
    lost, dup, partial, stray = h.check()
    h.host.sql("SELECT arrowport_stop()")
    h.host.close()
    # Requests whose last attempt was cut by a kill before any acknowledgement may have committed: they were
    # retried with their key until acknowledged, so nothing unacknowledged is left but requests never acked.
    print(f"soak: {h.kills} kills, {h.sent} requests, {h.retries} retries, {h.replays} replays, "
          f"{sum(h.acked.values())} rows acknowledged")
    print(f"soak: rows lost {lost}, duplicated {dup}, partial requests {partial}, unacknowledged requests present {len(stray)}")
    if rss:
        # DuckDB's buffer memory grows with the table (up to its memory_limit); the rest is arrowport's and the
        # process's, which must not grow after the warm-up (the first fifth of the run).
        own = [r - d for r, d in rss]
        warm = own[len(own) // 5]
        print(f"soak: RSS start {rss[0][0]} MiB, end {rss[-1][0]} MiB, peak {max(r for r, _ in rss)} MiB; DuckDB's buffer "
              f"memory at the end {rss[-1][1]} MiB")
        print(f"soak: RSS less DuckDB's buffer memory: after warm-up {warm} MiB, end {own[-1]} MiB, peak after warm-up "
              f"{max(own[len(own) // 5:])} MiB")
        if own[-1] > warm + 64:
            h.errors.append(f"RSS less DuckDB's memory grew from {warm} MiB after warm-up to {own[-1]} MiB")
    violations = lost + dup + partial + len(stray) + len(h.errors)
    for e in h.errors[:10]:
        print(f"soak: error: {e}")
    print(f"soak: {len(h.acked)} passed, {violations} failed")
    return 1 if violations else 0


if __name__ == "__main__":
    sys.exit(main())
