"""The status page's cost, and its screenshots: `python bench/page.py` (part of `make bench`).

1. The host's CPU time (from /proc, user + system) over SECONDS with no page open, then with ten tabs of the page
   open (headless chromium, each polling `/status.json` every second), with no ingest running: what the page costs.
2. With `--screenshots DIR`: a few streams under a steady load (and one failing), then the page at 1280x800 in the
   light and the dark scheme, written to DIR/page-light.png and DIR/page-dark.png.
Writes bench/results/<timestamp>-page.json.
"""
import os
import platform
import random
import sys
import threading
import time

import httpx
import pyarrow as pa

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "test"))
sys.path.insert(0, os.path.join(ROOT, "test", "python"))
import hosts  # noqa: E402
import report  # noqa: E402
from clients import flight_put, ipc_bytes  # noqa: E402
from test_page import ARGS, CHROMIUM  # noqa: E402

SECONDS = float(os.environ.get("PAGE_SECONDS", "30"))
TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def measure(pid, seconds):
    start = cpu_seconds(pid)
    time.sleep(seconds)
    return cpu_seconds(pid) - start


def load(addr, stop):
    rng = random.Random(1)
    with httpx.Client() as client:
        while not stop.is_set():
            n = rng.randrange(500, 3000)
            flight_put(addr, "events", pa.table({"id": pa.array(range(n), pa.int64()), "v": pa.array([1.5] * n)}))
            client.post(f"http://{addr}/streams/orders", content=ipc_bytes(pa.table({"order_id": pa.array(range(200), pa.int64())})),
                        headers={"Content-Type": "application/vnd.apache.arrow.stream"})
            if rng.random() < 0.05:
                client.post(f"http://{addr}/streams/payments", content=ipc_bytes(pa.table({"amount": ["12.50"]})),
                            headers={"Content-Type": "application/vnd.apache.arrow.stream"})
            time.sleep(0.05)


def main():
    from playwright.sync_api import sync_playwright
    shots = sys.argv[sys.argv.index("--screenshots") + 1] if "--screenshots" in sys.argv else None
    import tempfile
    with tempfile.TemporaryDirectory() as d:
        host = hosts.start("py20", os.path.join(d, "page.duckdb"))
        host.sql(hosts.load_sql())
        addr = host.sql("SELECT arrowport_listen('127.0.0.1:0')")[0][0]
        host.sql("CREATE TABLE payments (amount DECIMAL(10, 2))")
        host.sql("CALL arrowport_create_stream('payments', target := 'payments')")
        flight_put(addr, "events", pa.table({"id": pa.array([0], pa.int64()), "v": pa.array([1.5])}))
        pid = host.proc.pid
        time.sleep(2)
        idle = measure(pid, SECONDS)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            pages = []
            for _ in range(10):
                page = browser.new_page()
                page.goto(f"http://{addr}/")
                pages.append(page)
            time.sleep(2)
            ten_tabs = measure(pid, SECONDS)
            for page in pages:
                page.close()
            result = {"seconds": SECONDS, "host_cpu_seconds_no_page": idle, "host_cpu_seconds_ten_tabs": ten_tabs,
                      "host_cpu_percent_no_page": idle / SECONDS * 100, "host_cpu_percent_ten_tabs": ten_tabs / SECONDS * 100}
            print(f"host CPU over {SECONDS:.0f} s: no page {idle:.3f} s ({result['host_cpu_percent_no_page']:.2f}%), "
                  f"ten tabs {ten_tabs:.3f} s ({result['host_cpu_percent_ten_tabs']:.2f}%)", flush=True)
            if shots:
                stop = threading.Event()
                loader = threading.Thread(target=load, args=(addr, stop))
                loader.start()
                for scheme in ("light", "dark"):
                    ctx = browser.new_context(viewport={"width": 1280, "height": 800}, color_scheme=scheme)
                    page = ctx.new_page()
                    page.goto(f"http://{addr}/")
                    time.sleep(25)
                    page.locator('tr[data-stream="payments"] td.error summary').click()
                    page.screenshot(path=os.path.join(shots, f"page-{scheme}.png"))
                    ctx.close()
                stop.set()
                loader.join()
            browser.close()
        host.sql("SELECT arrowport_stop()")
        host.close()
    when = report.stamp()
    report.finish({"when": when, "host": platform.node(), "cores": os.cpu_count(), "results": [result]}, f"{when}-page", [])


if __name__ == "__main__":
    main()
