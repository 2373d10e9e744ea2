"""What both bench scripts do with their results: a timestamp, the JSON file under bench/results/, the exit status;
and timing a set of client threads."""
import datetime
import json
import os
import sys
import time

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def stamp():
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")


def finish(payload, name, bad):
    """Writes `payload` to bench/results/<name>.json, then exits non-zero if a row count was off (`bad`)."""
    os.makedirs(RESULTS, exist_ok=True)
    out = os.path.join(RESULTS, f"{name}.json")
    with open(out, "w") as f:
        json.dump(payload, f, indent=1)
    print(f"\nwrote {out}")
    if bad:
        print("ROW COUNT MISMATCH: " + "; ".join(bad))
        sys.exit(1)


def run_threads(threads):
    """Starts the threads, waits for all of them; returns the seconds that took."""
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - started


def timed_flight_puts(addr, name, table, more):
    """DoPuts of `table` to stream `name` over one connection while `more()` is true; each one's seconds."""
    import pyarrow.flight as fl
    out = []
    c = fl.connect(f"grpc://{addr}")
    while more():
        t0 = time.perf_counter()
        w, r = c.do_put(fl.FlightDescriptor.for_path(name), table.schema)
        w.write_table(table)
        w.done_writing()
        r.read()
        w.close()
        out.append(time.perf_counter() - t0)
    c.close()
    return out
