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
