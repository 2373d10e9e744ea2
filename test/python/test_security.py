"""Security end to end: protected mode, tokens and scopes, TLS, and limits, with real clients (pyarrow.flight,
httpx, raw sockets) against DuckDB hosts loaded with arrowport. Every refusal is checked to have written nothing.

Non-loopback clients are real: one test runs its client in a network namespace of its own, joined to the
host's by a veth pair (a remote peer with its own interface and address; skipped where the machine does not let
a test make a namespace); the others connect to the machine's own non-loopback address, so the listener sees a
peer that is not 127.0.0.1 (skipped when the machine has none).
"""
import json
import os
import socket
import ssl
import subprocess
import sys
import threading
import time

import httpx
import pyarrow as pa
import pyarrow.flight as fl
import pytest

import hosts
from clients import flight_put, ipc_bytes
from testdata import events

ARROW = "application/vnd.apache.arrow.stream"


def non_loopback_ip():
    """An IPv4 address of this machine that is not loopback, or None."""
    try:
        out = subprocess.run(["ip", "-4", "-o", "addr", "show", "scope", "global"], capture_output=True, text=True, timeout=5).stdout
        for line in out.splitlines():
            parts = line.split()
            if "inet" in parts:
                return parts[parts.index("inet") + 1].split("/")[0]
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("192.0.2.255", 9))  # no packet is sent; this only picks the outgoing address
            ip = s.getsockname()[0]
            return None if ip.startswith("127.") else ip
    except OSError:
        return None


EXTERNAL_IP = non_loopback_ip()
needs_external = pytest.mark.skipif(EXTERNAL_IP is None, reason="the machine has no non-loopback address")


class Host:
    """A host (Python 2.0 unless `kind` says otherwise) listening with the given options."""

    def __init__(self, db_path, listen_sql, kind="py20"):
        self.host = hosts.start(kind, db_path)
        self.host.sql(hosts.load_sql())
        self.setup = []
        self.listen_sql = listen_sql

    def listen(self):
        rows = self.host.sql(self.listen_sql)
        self.port = int(rows[0][1].rsplit(":", 1)[1])
        return self

    def sql(self, q):
        return self.host.sql(q)

    def token(self, name, streams=None):
        scope = "" if streams is None else ", streams := [" + ", ".join(f"'{s}'" for s in streams) + "]"
        return self.sql(f"SELECT token FROM arrowport_create_token('{name}'{scope})")[0][0]

    def count(self, table):
        exists = self.sql(f"SELECT count(*) FROM duckdb_tables() WHERE table_name = '{table}'")[0][0]
        return self.sql(f'SELECT count(*) FROM "{table}"')[0][0] if exists else 0

    def close(self):
        try:
            self.sql("SELECT arrowport_stop()")
        except Exception:
            pass
        return self.host.close()


@pytest.fixture
def make_host(tmp_path):
    made = []

    def make(listen_sql, db="sec.duckdb", kind="py20"):
        h = Host(str(tmp_path / db), listen_sql, kind)
        made.append(h)
        return h

    yield make
    for h in made:
        rc = h.close()  # a CLI that ran a failing statement exits 1
        assert rc in ((0, 1) if h.host.kind == "cli" else (0,)), h.host.stderr()[-2000:]


def bearer(token):
    return {"Authorization": f"Bearer {token}"}


def post(ip, port, name, table, headers=None, scheme="http", verify=True):
    h = {"Content-Type": ARROW}
    h.update(headers or {})
    return httpx.post(f"{scheme}://{ip}:{port}/streams/{name}", content=ipc_bytes(table), headers=h, timeout=30, verify=verify)


def put(ip, port, name, table, token=None, scheme="grpc", **client_kwargs):
    """A DoPut with an optional bearer token; returns the acknowledgement or raises the Flight error."""
    c = fl.connect(f"{scheme}://{ip}:{port}", **client_kwargs)
    try:
        headers = [(b"authorization", f"Bearer {token}".encode())] if token else []
        w, r = c.do_put(fl.FlightDescriptor.for_path(name), table.schema, options=fl.FlightCallOptions(headers=headers))
        w.write_table(table)
        w.done_writing()
        buf = r.read()
        w.close()
        return buf.to_pybytes()
    finally:
        c.close()


def refused_json(response, status, code):
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"]["code"] == code, body
    return body["error"]["message"]


@needs_external
def test_protected_mode_serves_only_loopback_until_a_token_exists(make_host):
    h = make_host("FROM arrowport_listen('0.0.0.0:0')").listen()
    assert h.sql("SELECT auth FROM arrowport_status() LIMIT 1") == [("protected",)]

    r = post(EXTERNAL_IP, h.port, "events", events(10))
    msg = refused_json(r, 401, "unauthenticated")
    assert "protected mode" in msg and "arrowport_create_token" in msg and "allow_unauthenticated" in msg, msg
    assert r.headers["www-authenticate"].startswith("Bearer")
    with pytest.raises(fl.FlightUnauthenticatedError, match="protected mode"):
        put(EXTERNAL_IP, h.port, "events", events(10))
    assert h.count("events") == 0
    # Loopback is served, on the same listener.
    assert post("127.0.0.1", h.port, "events", events(10)).status_code == 200
    assert h.count("events") == 10
    # /health stays open for load balancers; it tells nothing about the data.
    assert httpx.get(f"http://{EXTERNAL_IP}:{h.port}/health", timeout=10).json()["status"] == "ok"
    assert httpx.get(f"http://{EXTERNAL_IP}:{h.port}/streams", timeout=10).status_code == 401

    # Once a token exists, a non-loopback client must present one; loopback still needs none.
    token = h.token("etl")
    msg = refused_json(post(EXTERNAL_IP, h.port, "events", events(5)), 401, "unauthenticated")
    assert msg.startswith("a token is required"), msg
    assert post(EXTERNAL_IP, h.port, "events", events(5), bearer(token)).status_code == 200
    assert put(EXTERNAL_IP, h.port, "events", events(7), token=token)
    assert post("127.0.0.1", h.port, "events", events(3)).status_code == 200
    assert h.count("events") == 10 + 5 + 7 + 3


@needs_external
def test_allow_unauthenticated_opens_the_listener(make_host):
    h = make_host("FROM arrowport_listen('0.0.0.0:0', allow_unauthenticated := true)").listen()
    assert h.sql("SELECT DISTINCT auth FROM arrowport_status()") == [("none",)]
    assert post(EXTERNAL_IP, h.port, "events", events(4)).status_code == 200
    assert h.count("events") == 4


class Namespace:
    """A network namespace joined to this one by a veth pair: a client inside it is a real remote peer (its own
    interface and address, 10.231.N.2, routed over the pair to the host's side, 10.231.N.1)."""

    def __init__(self):
        n = os.getpid() % 250
        self.name, self.host_if, self.peer_if = f"arrowport-{os.getpid()}", f"apv{os.getpid()}h", f"apv{os.getpid()}c"
        self.host_ip, self.peer_ip = f"10.231.{n}.1", f"10.231.{n}.2"
        steps = [
            ["ip", "netns", "add", self.name],
            ["ip", "link", "add", self.host_if, "type", "veth", "peer", "name", self.peer_if],
            ["ip", "link", "set", self.peer_if, "netns", self.name],
            ["ip", "addr", "add", f"{self.host_ip}/30", "dev", self.host_if],
            ["ip", "link", "set", self.host_if, "up"],
            ["ip", "netns", "exec", self.name, "ip", "addr", "add", f"{self.peer_ip}/30", "dev", self.peer_if],
            ["ip", "netns", "exec", self.name, "ip", "link", "set", self.peer_if, "up"],
            ["ip", "netns", "exec", self.name, "ip", "link", "set", "lo", "up"],
        ]
        for step in steps:
            r = subprocess.run(step, capture_output=True, text=True)
            if r.returncode != 0:
                self.close()
                raise OSError(f"{' '.join(step)}: {r.stderr.strip()}")

    def run(self, code, *args):
        """Runs Python code in the namespace with this test's interpreter; returns its stdout's last line."""
        here = os.path.dirname(os.path.abspath(__file__))
        r = subprocess.run(["ip", "netns", "exec", self.name, sys.executable, "-c", code, *args], capture_output=True, text=True,
                           timeout=60, env={**os.environ, "PYTHONPATH": os.pathsep.join([here, os.path.dirname(here)])})
        assert r.returncode == 0, r.stderr[-2000:]
        return r.stdout.strip().splitlines()[-1]

    def close(self):
        subprocess.run(["ip", "link", "del", self.host_if], capture_output=True)
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True)


@pytest.fixture
def namespace():
    try:
        ns = Namespace()
    except OSError as e:
        pytest.skip(f"this machine does not let the test make a network namespace: {e}")
    yield ns
    ns.close()


# A client in the namespace: one REST POST and one Flight DoPut of 6 rows, each with an optional token, through
# this file's own helpers; prints what each got back.
REMOTE_CLIENT = r"""
import json, sys
import pyarrow.flight as fl
from test_security import bearer, post, put
from testdata import events
ip, port, token = sys.argv[1], int(sys.argv[2]), sys.argv[3]
r = post(ip, port, "events", events(6), bearer(token) if token else None)
out = {"rest": [r.status_code, r.headers.get("www-authenticate"), r.text]}
try:
    put(ip, port, "events", events(6), token=token or None)
    out["flight"] = "ok"
except fl.FlightError as e:
    out["flight"] = type(e).__name__ + ": " + str(e)
print(json.dumps(out))
"""


def test_a_client_in_another_network_namespace_meets_protected_mode(make_host, namespace):
    h = make_host("FROM arrowport_listen('0.0.0.0:0')").listen()
    remote = lambda token="": json.loads(namespace.run(REMOTE_CLIENT, namespace.host_ip, str(h.port), token))  # noqa: E731

    got = remote()
    status, challenge, text = got["rest"]
    assert status == 401 and challenge.startswith("Bearer"), got
    assert "protected mode" in text and "arrowport_create_token" in text, text
    assert got["flight"].startswith("FlightUnauthenticatedError") and "protected mode" in got["flight"], got
    assert h.count("events") == 0

    token = h.token("etl")
    got = remote("not-" + token)
    assert got["rest"][0] == 401 and got["flight"].startswith("FlightUnauthenticatedError"), got
    assert h.count("events") == 0
    got = remote(token)
    assert got["rest"][0] == 200 and got["flight"] == "ok", got
    assert h.count("events") == 12


def test_a_bare_port_binds_loopback_only(make_host):
    h = make_host("FROM arrowport_listen(':0')").listen()
    assert h.sql("SELECT DISTINCT address FROM arrowport_status()")[0][0].startswith("127.0.0.1:")
    if EXTERNAL_IP:
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"http://{EXTERNAL_IP}:{h.port}/health", timeout=5)


def test_one_token_secret_can_be_given_to_every_host_behind_a_balancer(make_host):
    a = make_host("FROM arrowport_listen('127.0.0.1:0', auth := 'token')", db="a.duckdb").listen()
    b = make_host("FROM arrowport_listen('127.0.0.1:0', auth := 'token')", db="b.duckdb").listen()
    secret = a.token("loader", ["events"])
    assert b.sql(f"SELECT token FROM arrowport_create_token('loader', streams := ['events'], secret := '{secret}')")[0][0] == secret
    for h in (a, b):
        assert post("127.0.0.1", h.port, "events", events(3), bearer(secret)).status_code == 200
        assert h.count("events") == 3
    # Only a secret arrowport made is taken: a weak one would be the weakest door of every host.
    for weak in ["hunter2", "arrowport_short", secret[:-1]]:
        with pytest.raises(hosts.HostError, match="secret must be a token secret arrowport made"):
            b.sql(f"FROM arrowport_create_token('weak', secret := '{weak}')")


def test_token_mode_refuses_missing_wrong_revoked_and_out_of_scope_tokens(make_host):
    h = make_host("FROM arrowport_listen('127.0.0.1:0', auth := 'token')").listen()
    etl = h.token("etl", ["events"])
    other = h.token("other", ["clicks"])
    wrong = etl[:-4] + ("AAAA" if not etl.endswith("AAAA") else "BBBB")

    # No token, even from loopback.
    msg = refused_json(post("127.0.0.1", h.port, "events", events(3)), 401, "unauthenticated")
    assert msg.startswith("a token is required"), msg
    with pytest.raises(fl.FlightUnauthenticatedError, match="a token is required"):
        put("127.0.0.1", h.port, "events", events(3))
    # A wrong token; the message never echoes what was sent.
    msg = refused_json(post("127.0.0.1", h.port, "events", events(3), bearer(wrong)), 401, "unauthenticated")
    assert msg == "the token is not valid (unknown or revoked)" and wrong not in msg
    with pytest.raises(fl.FlightUnauthenticatedError, match="not valid"):
        put("127.0.0.1", h.port, "events", events(3), token=wrong)
    # A malformed header.
    r = post("127.0.0.1", h.port, "events", events(3), {"Authorization": "Token abc"})
    assert "malformed" in refused_json(r, 401, "unauthenticated")
    # A token for another stream: authenticated, not allowed.
    msg = refused_json(post("127.0.0.1", h.port, "events", events(3), bearer(other)), 403, "permission_denied")
    assert msg == 'token "other" is not allowed to use stream "events"'
    with pytest.raises(fl.FlightUnauthorizedError, match='token "other" is not allowed to use stream "events"'):
        put("127.0.0.1", h.port, "events", events(3), token=other)
    assert h.count("events") == 0

    # The right token lands exactly what it sent, on both protocols.
    r = post("127.0.0.1", h.port, "events", events(11), bearer(etl))
    assert r.status_code == 200 and r.json()["rows"] == 11
    assert put("127.0.0.1", h.port, "events", events(13), token=etl)
    assert h.sql("SELECT count(*), sum(id) FROM events") == [(24, sum(range(11)) + sum(range(13)))]

    # Revoked: refused from the next request on, while the listener runs.
    h.sql("CALL arrowport_revoke_token('etl')")
    refused_json(post("127.0.0.1", h.port, "events", events(3), bearer(etl)), 401, "unauthenticated")
    with pytest.raises(fl.FlightUnauthenticatedError):
        put("127.0.0.1", h.port, "events", events(3), token=etl)
    assert h.count("events") == 24

    # Last use is recorded (never the secret).
    rows = h.sql("SELECT name, last_used_at IS NOT NULL FROM arrowport_tokens() ORDER BY name")
    assert rows == [("other", True)]
    status = str(h.sql("FROM arrowport_status()")) + str(h.sql("FROM arrowport_tokens()"))
    assert etl not in status and other not in status


def test_token_uses_are_saved_while_listening_so_a_kill_or_an_exit_without_stop_keeps_them(tmp_path):
    """Process exit runs no SQL (DuckDB's statics may be gone), so token uses are saved every 5 s while the runtime
    runs: a host killed after that keeps them, and one that ends without arrowport_stop() exits cleanly."""
    db = str(tmp_path / "t.duckdb")
    host = hosts.start("py20", db)
    try:
        host.sql(hosts.load_sql())
        addr = host.sql("SELECT address FROM arrowport_listen('127.0.0.1:0', auth := 'token')")[0][0]
        secret = host.sql("SELECT token FROM arrowport_create_token('etl')")[0][0]
        host.sql("SELECT token FROM arrowport_create_token('idle')")
        assert flight_put(addr, "events", events(3), token=secret)["rows"] == 3
        time.sleep(6)  # past one periodic save (every 5 s from the listen)
    finally:
        host.proc.kill()
        host.proc.wait()
    host = hosts.start("py20", db)
    host.sql(hosts.load_sql())
    assert host.sql("SELECT name, last_used_at IS NOT NULL FROM arrowport_tokens() ORDER BY name") == [
        ("etl", True), ("idle", False)]
    addr = host.sql("SELECT address FROM arrowport_listen('127.0.0.1:0', auth := 'token')")[0][0]
    secret = host.sql("SELECT token FROM arrowport_create_token('late')")[0][0]
    assert flight_put(addr, "events", events(2), token=secret)["rows"] == 2
    time.sleep(6)
    assert host.close() == 0, "a host that ends without arrowport_stop() exits cleanly"
    host = hosts.start("py20", db)
    try:
        host.sql(hosts.load_sql())
        assert host.sql("SELECT name, last_used_at IS NOT NULL FROM arrowport_tokens() ORDER BY name") == [
            ("etl", True), ("idle", False), ("late", True)]
        assert host.sql("SELECT count(*) FROM events") == [(5,)]
    finally:
        host.close()


def test_scopes_limit_listings_and_the_json_endpoints_own_targets(make_host):
    h = make_host("FROM arrowport_listen('127.0.0.1:0', auth := 'token')").listen()
    admin = h.token("admin")
    etl = h.token("etl", ["events"])
    assert post("127.0.0.1", h.port, "events", events(2), bearer(admin)).status_code == 200
    assert post("127.0.0.1", h.port, "orders", events(2), bearer(admin)).status_code == 200

    base = f"http://127.0.0.1:{h.port}"
    names = [s["stream"] for s in httpx.get(f"{base}/streams", headers=bearer(etl), timeout=10).json()["streams"]]
    assert names == ["events"]
    names = sorted(s["stream"] for s in httpx.get(f"{base}/streams", headers=bearer(admin), timeout=10).json()["streams"])
    assert names == ["events", "orders"]
    refused_json(httpx.get(f"{base}/streams/orders", headers=bearer(etl), timeout=10), 403, "permission_denied")
    assert httpx.get(f"{base}/metrics", timeout=10).status_code == 401
    assert "arrowport_batches_total" in httpx.get(f"{base}/metrics", headers=bearer(etl), timeout=10).text

    c = fl.connect(f"grpc://127.0.0.1:{h.port}")
    opts = fl.FlightCallOptions(headers=[(b"authorization", f"Bearer {etl}".encode())])
    assert [f.descriptor.path for f in c.list_flights(options=opts)] == [[b"events"]]
    with pytest.raises(fl.FlightUnauthorizedError):
        c.get_flight_info(fl.FlightDescriptor.for_path("orders"), options=opts)
    c.close()

    # The original JSON endpoint names its own target table: a token limited to streams may not.
    import base64
    t = events(3)
    body = {
        "config": {"target_table": "orders"},
        "batch": {"arrow_schema": base64.b64encode(t.schema.serialize().to_pybytes()).decode(),
                  "data": base64.b64encode(ipc_bytes(t)).decode()},
    }
    r = httpx.post(f"{base}/stream/events", json=body, headers=bearer(etl), timeout=10)
    assert "cannot name its own target table" in refused_json(r, 403, "permission_denied")
    assert h.count("orders") == 2
    r = httpx.post(f"{base}/stream/events", json=body, headers=bearer(admin), timeout=10)
    assert r.status_code == 200, r.text
    assert h.count("orders") == 5


def test_flight_basic_handshake_returns_a_bearer_token(make_host):
    h = make_host("FROM arrowport_listen('127.0.0.1:0', auth := 'token')").listen()
    secret = h.token("etl", ["events"])
    c = fl.connect(f"grpc://127.0.0.1:{h.port}")
    try:
        key, value = c.authenticate_basic_token("etl", secret)
        assert key.lower() == b"authorization" and value == f"Bearer {secret}".encode()
        opts = fl.FlightCallOptions(headers=[(key, value)])
        t = events(9)
        w, r = c.do_put(fl.FlightDescriptor.for_path("events"), t.schema, options=opts)
        w.write_table(t)
        w.done_writing()
        r.read()
        w.close()
        with pytest.raises(fl.FlightUnauthenticatedError):
            c.authenticate_basic_token("someone-else", secret)
    finally:
        c.close()
    assert h.count("events") == 9


# --- TLS ---------------------------------------------------------------------------------------------------

def make_pki(d):
    """A CA and a server certificate for 127.0.0.1 / localhost signed by it, made with openssl."""
    def run(*args):
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=d)

    run("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2",
        "-subj", "/CN=arrowport test CA", "-keyout", "ca.key", "-out", "ca.pem")
    run("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-subj", "/CN=localhost",
        "-keyout", "server.key", "-out", "server.csr")
    with open(os.path.join(d, "ext.cnf"), "w") as f:
        f.write("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    run("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-days", "2",
        "-extfile", "ext.cnf", "-out", "server.pem")
    run("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-subj", "/CN=other",
        "-keyout", "other.key", "-out", "other.csr")
    return {k: os.path.join(d, k) for k in ["ca.pem", "server.pem", "server.key", "other.key"]}


def test_tls_serves_flight_and_https_on_one_port(make_host, tmp_path):
    pki = make_pki(str(tmp_path))
    h = make_host(f"FROM arrowport_listen('127.0.0.1:0', tls_cert := '{pki['server.pem']}', tls_key := '{pki['server.key']}', auth := 'token')").listen()
    assert h.sql("SELECT DISTINCT tls FROM arrowport_status()") == [(True,)]
    token = h.token("etl")
    with open(pki["ca.pem"], "rb") as f:
        ca = f.read()

    assert put("127.0.0.1", h.port, "events", events(21), token=token, scheme="grpc+tls", tls_root_certs=ca)
    r = post("127.0.0.1", h.port, "events", events(8), bearer(token), scheme="https", verify=ssl.create_default_context(cafile=pki["ca.pem"]))
    assert r.status_code == 200 and r.json()["rows"] == 8, r.text
    assert r.http_version == "HTTP/1.1"
    assert h.count("events") == 29

    # An untrusting client and a clear-text client both fail, and write nothing.
    with pytest.raises(httpx.ConnectError):
        post("127.0.0.1", h.port, "events", events(1), bearer(token), scheme="https")
    with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError, httpx.ConnectError)):
        post("127.0.0.1", h.port, "events", events(1), bearer(token))
    with pytest.raises(fl.FlightUnavailableError):
        put("127.0.0.1", h.port, "events", events(1), token=token)
    assert h.count("events") == 29


def test_tls_files_are_checked_at_listen_time(make_host, tmp_path):
    pki = make_pki(str(tmp_path))
    h = make_host("SELECT 1")
    with pytest.raises(hosts.HostError, match="tls_cert and tls_key do not fit together"):
        h.sql(f"FROM arrowport_listen('127.0.0.1:0', tls_cert := '{pki['server.pem']}', tls_key := '{pki['other.key']}')")
    with pytest.raises(hosts.HostError, match=r'could not read tls_key ".*ca.pem": no PEM section'):
        h.sql(f"FROM arrowport_listen('127.0.0.1:0', tls_cert := '{pki['server.pem']}', tls_key := '{pki['ca.pem']}')")
    with pytest.raises(hosts.HostError, match="holds no certificate|could not read tls_cert"):
        h.sql(f"FROM arrowport_listen('127.0.0.1:0', tls_cert := '{pki['server.key']}', tls_key := '{pki['server.key']}')")
    assert h.sql("FROM arrowport_status()") == []


# --- limits ------------------------------------------------------------------------------------------------

class HeldRequest(threading.Thread):
    """A REST request whose body sends the schema, then waits until released, then the rest."""

    def __init__(self, port, name, table):
        super().__init__(daemon=True)
        self.port, self.name, self.table = port, name, table
        self.release = threading.Event()
        self.started_sending = threading.Event()
        self.response = None

    def body(self):
        data = ipc_bytes(self.table)
        yield data[:200]
        self.started_sending.set()
        self.release.wait(30)
        yield data[200:]

    def run(self):
        self.response = httpx.post(f"http://127.0.0.1:{self.port}/streams/{self.name}", content=self.body(),
                                   headers={"Content-Type": ARROW}, timeout=60)


def wait_in_flight(h, n):
    for _ in range(200):
        if h.sql("SELECT max(requests_in_flight) FROM arrowport_status()")[0][0] >= n:
            return
        time.sleep(0.05)
    raise AssertionError(f"never {n} requests in flight")


def test_requests_beyond_the_limit_are_refused_while_the_others_finish(make_host):
    h = make_host("FROM arrowport_listen('127.0.0.1:0', max_concurrent_requests := 2)").listen()
    held = [HeldRequest(h.port, "events", events(50, start=i * 50)) for i in range(2)]
    for t in held:
        t.start()
        assert t.started_sending.wait(10)
    wait_in_flight(h, 2)

    r = post("127.0.0.1", h.port, "events", events(5))
    msg = refused_json(r, 503, "busy")
    assert r.headers["retry-after"] == "1"
    assert msg == "2 requests are already in flight on this listener (max_concurrent_requests); retry later"
    # pyarrow has no class of its own for RESOURCE_EXHAUSTED; the status is in the text.
    with pytest.raises(pa.ArrowException, match="max_concurrent_requests") as e:
        put("127.0.0.1", h.port, "events", events(5))
    assert "resource exhausted" in str(e.value).lower()

    for t in held:
        t.release.set()
        t.join(30)
        assert t.response.status_code == 200, t.response.text
    assert h.sql("SELECT count(*), count(DISTINCT id) FROM events") == [(100, 100)]
    assert post("127.0.0.1", h.port, "events", events(5, start=100)).status_code == 200
    assert h.count("events") == 105


def test_a_stalled_client_is_cut_off_while_others_keep_ingesting(make_host):
    h = make_host("FROM arrowport_listen('127.0.0.1:0', stall_timeout := 1)").listen()
    t = events(40)

    # Flight: schema and one batch, then silence past the timeout.
    results = {}

    def stalled_put():
        c = fl.connect(f"grpc://127.0.0.1:{h.port}")
        w, r = c.do_put(fl.FlightDescriptor.for_path("stalled"), t.schema)
        w.write_table(t.slice(0, 10))
        time.sleep(2.5)
        try:
            w.write_table(t.slice(10))
            w.done_writing()
            r.read()
            w.close()
            results["flight"] = "accepted"
        except fl.FlightError as e:
            results["flight"] = e
        finally:
            c.close()

    # REST: a raw HTTP/1.1 chunked request that stops after the schema.
    def stalled_rest():
        data = ipc_bytes(t)
        s = socket.create_connection(("127.0.0.1", h.port))
        s.sendall(b"POST /streams/stalled HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: " + ARROW.encode()
                  + b"\r\nTransfer-Encoding: chunked\r\n\r\n" + f"{200:x}\r\n".encode() + data[:200] + b"\r\n")
        s.settimeout(10)
        results["rest"] = s.recv(4096).decode(errors="replace")
        s.close()

    threads = [threading.Thread(target=stalled_put), threading.Thread(target=stalled_rest)]
    for th in threads:
        th.start()
    # Meanwhile, other clients land their data.
    for i in range(5):
        assert post("127.0.0.1", h.port, "busy", events(10, start=i * 10)).status_code == 200
        assert flight_put(f"127.0.0.1:{h.port}", "busy", events(10, start=100 + i * 10))["rows"] == 10
    for th in threads:
        th.join(30)

    assert isinstance(results["flight"], fl.FlightTimedOutError), results["flight"]
    assert "sent nothing for 1s" in str(results["flight"])
    assert results["rest"].startswith("HTTP/1.1 408"), results["rest"]
    assert "sent nothing for 1s" in results["rest"]
    assert h.count("stalled") == 0
    assert h.sql("SELECT count(*), count(DISTINCT id) FROM busy") == [(100, 100)]


def test_size_limits_refuse_one_request_while_another_keeps_ingesting(make_host):
    h = make_host("FROM arrowport_listen('127.0.0.1:0', max_message_bytes := 1048576, max_body_bytes := 2097152)").listen()
    held = HeldRequest(h.port, "steady", events(500))
    held.start()
    assert held.started_sending.wait(10)
    wait_in_flight(h, 1)

    # A Flight message over max_message_bytes, a REST body over max_body_bytes (streamed, no length) and a
    # REST message over max_message_bytes inside a body that is within its limit.
    blob = pa.table({"blob": pa.array([b"x" * (2 << 20)])})
    with pytest.raises(pa.ArrowException, match="over the listener's size limit") as e:
        put("127.0.0.1", h.port, "big", blob)
    assert "resource exhausted" in str(e.value).lower()
    body = ipc_bytes(events(100_000))
    assert len(body) > 2097152
    r = httpx.post(f"http://127.0.0.1:{h.port}/streams/big", content=iter([body[i:i + 65536] for i in range(0, len(body), 65536)]),
                   headers={"Content-Type": ARROW}, timeout=30)
    assert "over the listener's limit" in refused_json(r, 413, "too_large")
    one_message = ipc_bytes(pa.table({"blob": pa.array([b"y" * 1_500_000])}))
    assert len(one_message) < 2097152
    r = httpx.post(f"http://127.0.0.1:{h.port}/streams/big", content=one_message, headers={"Content-Type": ARROW}, timeout=30)
    assert "over the listener's limit of 1048576 bytes" in refused_json(r, 413, "too_large")
    assert h.count("big") == 0

    # The request in flight all along finishes, whole.
    held.release.set()
    held.join(30)
    assert held.response.status_code == 200, held.response.text
    assert h.sql("SELECT count(*), count(DISTINCT id) FROM steady") == [(500, 500)]
