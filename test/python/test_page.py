"""The status page (`GET /`) in a real browser: Debian's chromium, headless, driven by Playwright (pinned, from
PyPI, with the system's chromium). It loads without console errors, shows what lands within 3 s, shows a failing
request's error, asks for a token where the listener demands one and then shows data; `/status.json` agrees with
`arrowport_metrics()`; a foreign page's requests stay refused. Screenshots go to build/test-artifacts/."""
import json
import os
import shutil

import httpx
import pyarrow as pa
import pytest

import hosts
from clients import flight_put, ipc_bytes

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = os.path.join(hosts.ROOT, "build", "test-artifacts")
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]

pytestmark = pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="chromium is not installed (.ci/run installs it)")


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


def open_page(browser, addr, **context):
    ctx = browser.new_context(viewport=context.pop("viewport", {"width": 1280, "height": 800}), **context)
    page = ctx.new_page()
    page.errors = []
    page.on("console", lambda m: page.errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: page.errors.append(str(e)))
    page.goto(f"http://{addr}/")
    return page


def shot(page, name):
    os.makedirs(ARTIFACTS, exist_ok=True)
    path = os.path.join(ARTIFACTS, name)
    page.screenshot(path=path, full_page=True)
    assert os.path.getsize(path) > 10_000
    return path


def test_the_page_shows_what_lands_and_what_fails(py_listening, browser):
    h = py_listening
    page = open_page(browser, h.addr)
    page.wait_for_selector("#listeners tbody tr", timeout=3000)
    assert page.locator("#listeners tbody tr").count() == 2
    flight_put(h.addr, "events", pa.table({"id": pa.array(range(1000), pa.int64())}))
    page.wait_for_selector('tr[data-stream="events"] td.rows:has-text("1,000")', timeout=3000)
    assert "main.events" in page.locator('tr[data-stream="events"]').inner_text()
    # A followable stream's followers show on its row.
    import json as _json
    import pyarrow.flight as fl
    h.sql("CALL arrowport_create_stream('events', follow := true)")
    flight_put(h.addr, "events", pa.table({"id": pa.array([1000], pa.int64())}))
    client = fl.connect(f"grpc://{h.addr}")
    reader = client.do_get(fl.Ticket(_json.dumps({"follow": "events", "after": 0})))
    reader.read_chunk()
    page.wait_for_selector('tr[data-stream="events"] td.followers:has-text("1")', timeout=3000)
    client.close()
    # A failing request: its error appears on the stream's row, in full on demand.
    h.sql("CREATE TABLE strict_t (id BIGINT)")
    h.sql("CALL arrowport_create_stream('strict', target := 'strict_t')")
    r = httpx.post(f"http://{h.addr}/streams/strict", content=ipc_bytes(pa.table({"name": ["x"]})),
                   headers={"Content-Type": "application/vnd.apache.arrow.stream"})
    assert r.status_code == 409
    row = page.locator('tr[data-stream="strict"]')
    row.locator("td.error details").wait_for(timeout=3000)
    row.locator("td.error summary").click()
    assert "does not fit table main.strict_t" in row.locator("td.error pre").inner_text()
    assert page.errors == []
    shot(page, "page-light.png")
    dark = open_page(browser, h.addr, color_scheme="dark", viewport={"width": 390, "height": 844})
    dark.wait_for_selector('tr[data-stream="events"]', timeout=3000)
    background = dark.evaluate("getComputedStyle(document.body).backgroundColor")
    assert background == "rgb(19, 20, 22)", background
    shot(dark, "page-dark-phone.png")
    assert dark.errors == []


def test_a_token_listener_asks_for_the_token_then_shows_data(tmp_path, browser):
    host = hosts.start("py20", str(tmp_path / "t.duckdb"))
    try:
        host.sql(hosts.load_sql())
        secret = host.sql("SELECT token FROM arrowport_create_token('ops')")[0][0]
        addr = host.sql("SELECT address FROM arrowport_listen('127.0.0.1:0', auth := 'token')")[0][0]
        flight_put(addr, "events", pa.table({"id": pa.array(range(1000), pa.int64())}), token=secret)
        page = open_page(browser, addr)
        page.wait_for_selector("#login", state="visible", timeout=3000)
        assert page.locator("#state").inner_text() == "token needed"
        page.fill("#token", "not-the-token")
        page.click("#login button")
        page.wait_for_selector("#login-why:has-text('That token was refused.')", timeout=3000)
        page.fill("#token", secret)
        page.click("#login button")
        page.wait_for_selector('tr[data-stream="events"] td.rows:has-text("1,000")', timeout=3000)
        # The token lives in this tab's sessionStorage, never in a cookie or the URL.
        assert page.evaluate("sessionStorage.getItem('arrowport-token')") == secret
        assert page.context.cookies() == [] and secret not in page.url
        # The only console errors are the browser's notes of the 401 answers that asked for the token.
        assert all("401" in e for e in page.errors), page.errors
        host.sql("SELECT arrowport_stop()")
    finally:
        host.close()


def test_status_json_agrees_with_arrowport_metrics_and_foreign_pages_stay_out(py_listening):
    h = py_listening
    flight_put(h.addr, "events", pa.table({"id": pa.array(range(10), pa.int64())}))
    r = httpx.post(f"http://{h.addr}/streams/events", content=ipc_bytes(pa.table({"id": pa.array([1], pa.int64())})),
                   headers={"Content-Type": "application/vnd.apache.arrow.stream"})
    assert r.status_code == 200
    status = httpx.get(f"http://{h.addr}/status.json").json()
    columns = ["stream", "protocol", "requests_ok", "requests_failed", "rows_committed", "batches", "wire_bytes", "decoded_bytes",
               "rows_rolled_back", "last_error", "latency_p50_ms", "latency_p99_ms"]
    sql = h.sql(f"SELECT {', '.join(columns)} FROM arrowport_metrics() ORDER BY stream, protocol")
    page_rows = [tuple(row[c] for c in columns) for row in status["streams"]]
    assert page_rows == sql
    assert {r["target"] for r in status["streams"]} == {"main.events"}
    assert status["memory_budget"]["limit_bytes"] == 1 << 30
    assert [(l["protocol"], l["address"], l["tls"], l["auth"]) for l in status["listeners"]] == [
        ("flight", h.addr, False, "protected"), ("rest", h.addr, False, "protected")]
    # The page is public (it holds no data); its data is not, and a foreign origin is refused as before.
    page = httpx.get(f"http://{h.addr}/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
    assert "http://" not in page.text.split("<script>")[0] and "https://" not in page.text
    foreign = httpx.get(f"http://{h.addr}/status.json", headers={"Origin": "http://evil.example"})
    assert foreign.status_code == 403 and "Origin" in foreign.json()["error"]["message"]
    own = httpx.get(f"http://{h.addr}/status.json", headers={"Origin": f"http://{h.addr}"})
    assert own.status_code == 200
    assert json.loads(own.text)["streams"]
