"""Loading the one binary into each supported host, and refusing older DuckDBs cleanly."""
import os
import subprocess

import hosts


def test_loads_in_every_host_and_twice(host_kind, db_path):
    host = hosts.start(host_kind, db_path)
    try:
        host.sql(hosts.load_sql())
        host.sql(hosts.load_sql())
        version = host.sql("SELECT arrowport_version()")[0][0]
        assert version.startswith("arrowport 0.1.0 (DuckDB v")
        assert version.endswith(", C API v1.2.0)")
        if host_kind == "py20":
            assert "DuckDB v2.0." in version
        else:
            assert "DuckDB v1.5." in version
    finally:
        rc = host.close()
    assert rc == 0


def test_second_connection_loads_and_sees_the_functions(db_path):
    host = hosts.start("py20", db_path)
    try:
        host.sql(hosts.load_sql(), conn=0)
        host.sql(hosts.load_sql(), conn=1)
        assert host.sql("SELECT arrowport_stop()", conn=1) == [(0,)]
        addr = host.sql("SELECT arrowport_listen('127.0.0.1:0')", conn=1)[0][0]
        status = host.sql("SELECT DISTINCT address FROM arrowport_status()", conn=0)
        assert status == [(addr,)]
        assert host.sql("SELECT arrowport_stop()", conn=0) == [(1,)]
    finally:
        assert host.close() == 0


def test_an_older_duckdb_refuses_with_its_own_error():
    old = os.path.join(hosts.ROOT, ".venv-old", "bin", "python")
    script = (
        "import duckdb\n"
        "c = duckdb.connect(config={'allow_unsigned_extensions': 'true'})\n"
        f"try:\n    c.execute(\"LOAD '{hosts.EXTENSION}'\")\n    print('LOADED')\n"
        "except Exception as e:\n    print('REFUSED', e)\n"
        "print('ALIVE', c.execute('SELECT 41 + 1').fetchone()[0])\n"
    )
    out = subprocess.run([old, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "REFUSED" in out.stdout
    assert "built for DuckDB C API version 'v1.2.0'" in out.stdout
    assert "ALIVE 42" in out.stdout


def test_load_listens_when_the_environment_says_so(host_kind, db_path, monkeypatch):
    """ARROWPORT_LISTEN (and ARROWPORT_LISTEN_OPTIONS): `LOAD arrowport` alone starts the listener, as a service
    unit running `duckdb -cmd "LOAD arrowport"` needs."""
    import httpx
    import pyarrow as pa
    from clients import ipc_bytes

    monkeypatch.setenv("ARROWPORT_LISTEN", "127.0.0.1:0")
    monkeypatch.setenv("ARROWPORT_LISTEN_OPTIONS", "auth := 'token', max_message_bytes := 1048576")
    host = hosts.start(host_kind, db_path)
    try:
        host.sql(hosts.load_sql())
        status = host.sql("SELECT protocol, address, auth FROM arrowport_status() ORDER BY protocol")
        assert [(p, a) for p, _, a in status] == [("flight", "token"), ("rest", "token")]
        addr = status[0][1]
        assert httpx.post(f"http://{addr}/streams/env", content=ipc_bytes(pa.table({"a": [1]})),
                          headers={"Content-Type": "application/vnd.apache.arrow.stream"}).status_code == 401
        token = host.sql("SELECT token FROM arrowport_create_token('svc')")[0][0]
        r = httpx.post(f"http://{addr}/streams/env", content=ipc_bytes(pa.table({"a": [1, 2]})),
                       headers={"Content-Type": "application/vnd.apache.arrow.stream", "Authorization": f"Bearer {token}"})
        assert r.status_code == 200 and r.json()["rows"] == 2
        assert host.sql("SELECT sum(a)::INTEGER FROM env") == [(3,)]
        assert host.sql("SELECT arrowport_stop()") == [(1,)]
    finally:
        rc = host.close()
    assert rc == 0


def test_load_fails_with_the_reason_when_the_environment_listener_cannot_start(db_path, monkeypatch):
    monkeypatch.setenv("ARROWPORT_LISTEN", "not-an-address")
    host = hosts.start("py20", db_path)
    try:
        try:
            host.sql(hosts.load_sql())
            raise AssertionError("LOAD should have failed")
        except hosts.HostError as e:
            assert "ARROWPORT_LISTEN=not-an-address" in str(e), str(e)
            assert "not-an-address" in str(e)
    finally:
        host.close()


def test_the_documented_service_command_line_serves_and_stops_on_sigterm(tmp_path):
    """The systemd unit of docs/deploying.md: `sh -c 'tail -f /dev/null | duckdb -unsigned -cmd "LOAD arrowport" DB'` with
    ARROWPORT_LISTEN set serves until systemd's SIGTERM to its processes; what was acknowledged is in the file."""
    import re
    import signal
    import socket
    import time

    import httpx
    import pyarrow as pa
    from clients import ipc_bytes

    with open(os.path.join(hosts.ROOT, "docs", "deploying.md")) as f:
        exec_start = re.search(r"^ExecStart=(/bin/sh -c '.*')$", f.read(), re.M).group(1)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    db = str(tmp_path / "landing.duckdb")
    command = (exec_start.removeprefix("/bin/sh -c '").removesuffix("'")
               .replace("duckdb -unsigned", f"{hosts.CLI} -unsigned")
               .replace('"LOAD arrowport"', f"\"LOAD '{hosts.EXTENSION}'\"")
               .replace("/var/lib/arrowport/landing.duckdb", db))
    env = dict(os.environ, ARROWPORT_LISTEN=f"127.0.0.1:{port}", ARROWPORT_LISTEN_OPTIONS="sql := 'off'")
    unit = subprocess.Popen(["/bin/sh", "-c", command], env=env, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert unit.poll() is None and time.monotonic() < deadline, unit.stdout.read() if unit.poll() is not None else "no listener"
            time.sleep(0.2)
        r = httpx.post(f"http://127.0.0.1:{port}/streams/svc", content=ipc_bytes(pa.table({"a": [1, 2, 3]})),
                       headers={"Content-Type": "application/vnd.apache.arrow.stream"})
        assert r.status_code == 200 and r.json()["rows"] == 3
    finally:
        os.killpg(unit.pid, signal.SIGTERM)  # systemd's stop: SIGTERM to every process of the unit
        unit.wait(timeout=30)
    import duckdb
    deadline = time.monotonic() + 30
    while True:  # the CLI outlives sh for a moment: the file is free once it has ended
        try:
            con = duckdb.connect(db, read_only=True)
            break
        except duckdb.IOException as e:
            assert "lock" in str(e) and time.monotonic() < deadline, str(e)
            time.sleep(0.1)
    with con:
        assert con.sql("SELECT list(a ORDER BY a) FROM svc").fetchall() == [([1, 2, 3],)]


def test_administrative_functions_act_once_under_pythons_relational_api(tmp_path):
    """`con.sql(...)` binds a statement, then binds it again to run it: what the administrative table functions
    do happens when they run (once per execution), never at bind."""
    script = f"""
import duckdb
con = duckdb.connect({str(tmp_path / 'rel.duckdb')!r}, config={{"allow_unsigned_extensions": "true"}})
con.execute("LOAD '{hosts.EXTENSION}'")
rel = con.sql("FROM arrowport_create_token('once')")
print(len(con.sql("FROM arrowport_tokens()").fetchall()))   # bound, not run: no token yet
secret = rel.fetchall()[0][1]
print(len(con.sql("FROM arrowport_tokens()").fetchall()), secret.startswith("arrowport_"))
print(con.sql("FROM arrowport_create_stream('s', target := 'main.t')").fetchall()[0][:2])
print(len(con.sql("FROM arrowport_listen('127.0.0.1:0')").fetchall()), len(con.sql("FROM arrowport_status()").fetchall()))
print(con.sql("SELECT arrowport_stop()").fetchall()[0][0])
"""
    proc = subprocess.run([os.path.join(hosts.ROOT, ".venv", "bin", "python"), "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["0", "1 True", "('s', 'main.t')", "2 2", "1"], proc.stdout
